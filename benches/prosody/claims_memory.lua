-- Memory Prosody holds for the offline messages mod_readtrack keeps until readtrack confirms them
-- durable (claims), against `readtrack_max_claimed_bytes`, the budget that bounds it. Messages to
-- a user with no session are claimed and never confirmed until the module stops claiming (the
-- budget is full; later ones go to offline storage at once); the heap with those claims held,
-- after a full collection, is compared with the heap once the link's end has handed them to
-- offline storage (a handler here that keeps nothing). The real module under stub_prosody.lua,
-- as the cost benches, on the Prosody line whose sources are given.
--
--   lua5.4 benches/prosody/claims_memory.lua /usr/lib/prosody [BUDGET_KIB]
--
-- Prints, per kind of message, the claims the budget (default 2048 KiB) held, the heap they took
-- and its ratio to the budget (tests/lua_cost.rs holds it at most 1), and the same ratio had the
-- budget counted the message's bytes alone (as before it counted its shape).

local source, budget_kib = arg[1], tonumber(arg[2] or 2048);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");
local budget = budget_kib * 1024;

local function heap()
	collectgarbage("collect");
	collectgarbage("collect");
	return collectgarbage("count") * 1024;
end

local function clear(list)
	for i = #list, 1, -1 do list[i] = nil; end
end

-- `payload`: what the message carries besides its receipt request.
local function run(label, payload)
	local stub = load_stub(source, module_path, { readtrack_max_claimed_bytes = budget });
	local alice = stub.session("alice@localhost/load");
	local stored = 0;
	stub.hosts.localhost.events.add_handler("message/offline/handle", function()
		stored = stored + 1;
		return true;
	end, -1);
	stub.accepts("signal done-list claims");
	stub.turn();
	clear(stub.emitted);
	local claimed, bytes, sent = 0, 0, 0;
	-- Until a message is left to offline storage: the budget is full.
	while stored == 0 do
		sent = sent + 1;
		assert(sent <= 1000000, "the budget never filled");
		local xml = ("<message id='off%d' type='chat' to='bob@localhost'><request xmlns='urn:xmpp:receipts'/>%s</message>"):format(sent, payload);
		stub.post(alice, stub.parse({ xml })[1]);
		stub.turn();
		-- The events went to readtrack: only the module's own copies stay.
		for _, event in ipairs(stub.events(0)) do
			if event:find("<routed [^>]*claim='") then
				claimed = claimed + 1;
				local first = event:find("<message ", event:find("<forwarded", 1, true), true);
				local last = select(2, event:find("</message></forwarded>", first, true));
				bytes = bytes + (last - #"</forwarded>" - first + 1);
			end
		end
		clear(stub.emitted);
	end
	local held = heap();
	stub.hosts["readtrack.localhost"].events.fire_event("component-disconnected",
		{ session = stub.hosts["readtrack.localhost"].modules.component.session, reason = "bench" });
	local after = heap();
	assert(claimed == sent - 1 and stored == sent, ("%d claimed, %d stored offline, of %d"):format(claimed, stored, sent));
	local taken = held - after;
	print(("%s: %s: the %d KiB budget held %d claims (%.0f bytes of message each): %.0f KiB of heap, %.2fx the budget (counting bytes alone: %.2fx)"):format(
		source, label, budget_kib, claimed, bytes / claimed, taken / 1024, taken / budget, taken / bytes));
end

run("chat line", "<body>offline message with a line of text in it, as people write them</body>");
run("one character", "<body>x</body>");
run("OMEMO", "<encrypted xmlns='eu.siacs.conversations.axolotl'><header sid='12345'><key rid='1'>"
	.. ("A"):rep(200) .. "</key><key rid='2'>" .. ("B"):rep(200) .. "</key><iv>" .. ("C"):rep(16)
	.. "</iv></header><payload>" .. ("D"):rep(1400) .. "</payload></encrypted><store xmlns='urn:xmpp:hints'/>");
run("200 empty elements", "<body>x</body>" .. ("<a/>"):rep(200));
local attrs = {};
for i = 1, 200 do attrs[#attrs + 1] = ("a%d=''"):format(i); end
run("200 empty attributes", "<body>x</body><x xmlns='urn:example' " .. table.concat(attrs, " ") .. "/>");
run("200 entities", "<body>" .. ("x&amp;"):rep(200) .. "</body>");
