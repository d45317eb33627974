-- Lua instructions mod_readtrack spends on the message inside N <routed> events (issue 17 item 1),
-- for a chat message as a client's stream hands it to Prosody (util.xmppstream, c2s default
-- namespace) and as Prosody writes it to the recipient's session (tostring, then the bytes/out
-- filters): before, the module serialised the message again for the event (forwarded());
-- after, its last stanzas/out filter notes the message, its first bytes/out filter takes the bytes
-- Prosody wrote, and the event splices jabber:client into their start tag. Prosody's own write
-- (the tostring both pay) is left out; so is the rest of the event, the same in both.
--
--   lua5.4 benches/prosody/event_cost.lua /usr/lib/prosody [N]
--   lua5.4 benches/prosody/event_cost.lua target/prosody13/usr/lib/prosody [N]

local source, n = arg[1], tonumber(arg[2] or 4000);
-- 0.12 names its modules util.*, 13 prosody.util.* (from the folder above the sources).
package.path = source .. "/?.lua;" .. source .. "/../?.lua;" .. package.path;
package.cpath = source .. "/?.so;" .. source .. "/../?.so;" .. package.cpath;
local st = require "util.stanza";
local xml_escape = st.xml_escape;
local xmppstream = require "util.xmppstream";
local t_concat = table.concat;

local xmlns_client, xmlns_forward = "jabber:client", "urn:xmpp:forward:0";

-- The load bench's chat message (benches/load.rs), and a seed one with a JSON body and a thread.
local shapes = {
	xep = "<message id='p1m%d' type='chat' to='bob@localhost'><request xmlns='urn:xmpp:receipts'/><body>load message %d</body></message>",
	seed = "<message id='V4NkR-%d' type='chat' to='bob@localhost/Spark 2.6.3'><body>{&quot;time&quot;:&quot;2013-11-20T06:41:36.102Z&quot;,&quot;cnt&quot;:&quot;hello %d&quot;,&quot;msgTypec&quot;:&quot;10000&quot;,&quot;mtype&quot;:&quot;0&quot;}</body><thread>P2J5R2</thread></message>",
};

local function parse(shape)
	local stanzas = {};
	local cb = { stream_ns = "http://etherx.jabber.org/streams", stream_tag = "stream",
		default_ns = xmlns_client };
	function cb.streamopened(session) session.notopen = nil; end
	function cb.handlestanza(_, stanza)
		stanza.attr.from = "alice@localhost/phone"; -- as core_post_stanza stamps it
		stanzas[#stanzas + 1] = stanza;
	end
	local stream = xmppstream.new({ notopen = true }, cb);
	stream:feed("<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
	for i = 1, n do stream:feed(shape:format(i, i)); end
	assert(#stanzas == n);
	return stanzas;
end

local function xml_attr(name, value)
	if value == nil then return ""; end
	return " " .. name .. "='" .. xml_escape(value) .. "'";
end

-- Before: mod_readtrack's forwarded() (as of main at f82aef8).
local function forwarded(stanza, to)
	local attr = stanza.attr;
	local xmlns, old_to = attr.xmlns, attr.to;
	attr.xmlns = xmlns_client;
	if to and not old_to then attr.to = to; end
	local ok, xml = pcall(tostring, stanza);
	attr.xmlns, attr.to = xmlns, old_to;
	if not ok then error(xml); end
	return "<forwarded xmlns='" .. xmlns_forward .. "'>" .. xml .. "</forwarded>";
end

-- After: the two filters and forwarded_bytes(), as in contrib/prosody/mod_readtrack.lua.
local in_flight, writing, writing_session = {}, nil, nil;
local function note_written_stanza(stanza, session)
	local record = in_flight[stanza];
	if record and not record.bytes and stanza.attr.xmlns == nil then
		writing, writing_session = stanza, session;
	end
	return stanza;
end
local function take_written_bytes(data, session)
	if writing and writing_session == session then
		local record = in_flight[writing];
		if record and not record.bytes and type(data) == "string" and data:sub(1, 9) == "<message " then
			record.bytes, record.bytes_to = data, writing.attr.to;
		end
		writing, writing_session = nil, nil;
	end
	return data;
end
local function forwarded_bytes(bytes, written_to, to)
	return t_concat({ "<forwarded xmlns='", xmlns_forward, "'><message xmlns='", xmlns_client, "'",
		written_to == nil and xml_attr("to", to) or "", bytes:sub(9), "</forwarded>" });
end

local function count(f)
	local c = 0;
	debug.sethook(function() c = c + 1; end, "", 1);
	f();
	debug.sethook();
	return c;
end

for _, name in ipairs({ "xep", "seed" }) do
	local stanzas = parse(shapes[name]);
	-- What Prosody writes to the session, made outside the count: both pay it.
	local written = {};
	for i, stanza in ipairs(stanzas) do written[i] = tostring(stanza); end
	local before_out, after_out = {}, {};
	local before = count(function()
		for i, stanza in ipairs(stanzas) do before_out[i] = forwarded(stanza, "bob@localhost"); end
	end);
	local session = {};
	local after = count(function()
		for i, stanza in ipairs(stanzas) do
			local record = {};
			in_flight[stanza] = record;
			take_written_bytes(written[i], session, note_written_stanza(stanza, session));
			in_flight[stanza] = nil;
			after_out[i] = forwarded_bytes(record.bytes, record.bytes_to, "bob@localhost");
		end
	end);
	-- The same text here (one table, one attribute order); readtrack reads both alike anyway.
	for i = 1, n do
		local a, b = before_out[i], after_out[i];
		assert(#a == #b, ("%s %d: %s | %s"):format(name, i, a, b));
	end
	print(("%s: %s, %d messages: serialised again %d Lua instructions (%.0f each), written bytes reused %d (%.0f each): %.1f× fewer"):format(
		source, name, n, before, before / n, after, after / n, before / after));
end
