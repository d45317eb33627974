-- mod_readtrack's budget holds for stanzas a hostile client can send: every event the module
-- writes for a message is within `readtrack_max_event_bytes` (256 KiB by default) and a little
-- wrapping, or the message is left to Prosody. The module decides before routing, from a bound
-- of the stanza's serialised size that it computes without serialising; a bound that falls short
-- of what Prosody writes would let one message of a few KB on the wire become an event of
-- megabytes, past readtrack's 1 MiB frame, which readtrack skips whole, with every other event
-- batched in the same write. Each stanza below is parsed as Prosody's c2s stream parses it
-- (within the default c2s_stanza_size_limit, 256 KiB) and sent by alice to bob's session, right
-- after a small message of hers to erin in the same turn of Prosody's loop (so in the same
-- write to readtrack, batched), and the events and writes are measured. The real module under
-- stub_prosody.lua, on the Prosody line whose sources are given.
--
--   lua5.4 benches/prosody/budget_bound.lua /usr/lib/prosody
--
-- Prints one line per stanza: its bytes on the wire, Prosody's serialisation, the largest event
-- written for it or "left to the server", and the turn's largest write. Fails if an event is over
-- the budget and the allowance for its wrapping, or a write over readtrack's frame.

local source = arg[1];
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");
local t_unpack = table.unpack;
local max_event_bytes, wrapping, frame = 256 * 1024, 4 * 1024, 1024 * 1024;
local wire_limit = 256 * 1024;

local stub = load_stub(source, module_path);
local alice = stub.session("alice@localhost/a");
stub.session("bob@localhost/b");
stub.session("erin@localhost/e");
stub.accepts("signal done-list routed-signal inherited-namespace batched");
stub.turn();

local function attrs(count, format)
	local out = {};
	for i = 1, count do out[i] = format:format(i); end
	return table.concat(out);
end

local function message(id, inside)
	return ("<message id='%s' type='chat' to='bob@localhost/b'><body>hi</body>%s</message>"):format(id, inside);
end

local cases = {
	-- Prosody writes a prefixed attribute as its own namespace declaration and the prefixed name,
	-- for each attribute: one declaration on the wire, repeated on every attribute written.
	{ "a long namespace on 250 prefixed attributes", message("ns-long",
		"<x xmlns='urn:x' xmlns:a='" .. ("&apos;"):rep(800) .. "'" .. attrs(250, " a:b%d=''") .. "/>") },
	{ "a longer namespace on 50 prefixed attributes", message("ns-longer",
		"<x xmlns='urn:x' xmlns:a='" .. ("&apos;"):rep(5000) .. "'" .. attrs(50, " a:b%d=''") .. "/>") },
	{ "9,000 prefixed attributes of a short namespace", message("ns-many",
		"<x xmlns='urn:x' xmlns:a='u'" .. attrs(9000, " a:b%d=''") .. "/>") },
	{ "a body of 43,000 apostrophes", message("body-apos", "<x xmlns='urn:x'>"
		.. ("'"):rep(43000) .. "</x>") },
	{ "attribute values of apostrophes", message("attr-apos",
		"<x xmlns='urn:x'" .. attrs(40, " v%d=\"" .. ("'"):rep(1000) .. "\"") .. "/>") },
	{ "a small chat message", message("small", "") },
};

local failed = false;
for n, case in ipairs(cases) do
	local name, wire = case[1], case[2];
	assert(#wire <= wire_limit, name .. ": over the c2s stanza size limit");
	local beside, stanza = t_unpack(stub.parse({
		("<message id='beside-%d' type='chat' to='erin@localhost/e'><body>x</body></message>"):format(n), wire }));
	local before = #stub.emitted;
	stub.post(alice, beside);
	stub.post(alice, stanza);
	stub.turn();
	local largest, largest_write = 0, 0;
	for _, event in ipairs(stub.events(before)) do
		if event:find(stanza.attr.id, 1, true) then largest = math.max(largest, #event); end
	end
	for i = before + 1, #stub.emitted do largest_write = math.max(largest_write, #stub.emitted[i]); end
	local over = largest > max_event_bytes + wrapping or largest_write > frame;
	failed = failed or over;
	print(("%s: %d bytes on the wire, %d serialised, %s; the largest write %d bytes%s"):format(name,
		#wire, #tostring(stanza),
		largest > 0 and ("an event of " .. largest .. " bytes") or "left to the server",
		largest_write, over and " OVER THE BUDGET" or ""));
end
assert(not failed, "an event over readtrack_max_event_bytes, or a write over readtrack's frame");
