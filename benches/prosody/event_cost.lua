-- Lua instructions contrib/prosody/mod_readtrack.lua adds to N delivered chat messages (issue 17
-- item 1), for a chat message as a client's stream hands it to Prosody (util.xmppstream, c2s
-- default namespace), sent by a local client to a local user's session and written to it by
-- sessionmanager's send (stanzas/out filters, tostring, bytes/out filters): the module's whole
-- work for the message (its pre-message and routing hooks, its filters, its decisions, the
-- <routed> event), with the module loaded under stub_prosody.lua, minus the same flow without it.
-- Two ways the event gets the message:
--   written bytes reused: the module's last stanzas/out filter notes the message, its first
--     bytes/out filter takes the bytes Prosody wrote, the event splices jabber:client into them;
--   serialised again (forwarded()): what it does where it cannot take them, here because another
--     stanzas/out filter writes a copy (as mod_websocket's does); that filter runs in both flows.
-- Prosody's own write (the tostring both pay) is in both flows and cancels out.
--
--   lua5.4 benches/prosody/event_cost.lua /usr/lib/prosody [N]
--   lua5.4 benches/prosody/event_cost.lua target/prosody13/usr/lib/prosody [N]

local source, n = arg[1], tonumber(arg[2] or 4000);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local load_stub = dofile(here .. "/stub_prosody.lua");
-- READTRACK_MODULE: another copy of the module (an older commit's, for a before/after).
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";

-- The load bench's chat message (benches/load.rs), and a seed one with a JSON body and a thread.
local shapes = {
	xep = "<message id='p1m%d' type='chat' to='bob@localhost'><request xmlns='urn:xmpp:receipts'/><body>load message %d</body></message>",
	seed = "<message id='V4NkR-%d' type='chat' to='bob@localhost/Spark 2.6.3'><body>{&quot;time&quot;:&quot;2013-11-20T06:41:36.102Z&quot;,&quot;cnt&quot;:&quot;hello %d&quot;,&quot;msgTypec&quot;:&quot;10000&quot;,&quot;mtype&quot;:&quot;0&quot;}</body><thread>P2J5R2</thread></message>",
};

-- Instructions of N messages of `shape` from alice to bob, and the module's events.
local function run(shape, with_module, copying)
	local stub = load_stub(source, with_module and module_path or nil);
	local filters = require "util.filters";
	local st_clone = require "util.stanza".clone;
	local alice = stub.session("alice@localhost/phone");
	local bob = stub.session("bob@localhost/Spark 2.6.3");
	if copying then
		filters.add_filter(bob, "stanzas/out", function(stanza) return stanza.name and st_clone(stanza) or stanza; end, 500);
	end
	local xml = {};
	for i = 1, n do xml[i] = shape:format(i, i); end
	local stanzas = stub.parse(xml);
	local before = #stub.emitted;
	local count = stub.count(function()
		for i = 1, n do
			stub.post(alice, stanzas[i]);
			stub.turn();
		end
	end);
	assert(bob.written and bob.written:find("hello " .. n, 1, true) or bob.written:find("load message " .. n, 1, true));
	local routed = {};
	for _, event in ipairs(stub.events(before)) do
		if event:find("<routed ", 1, true) then routed[#routed + 1] = event; end
	end
	return count, routed;
end

for _, name in ipairs({ "xep", "seed" }) do
	local shape = shapes[name];
	local reused_alone = run(shape, false, false);
	local reused, reused_events = run(shape, true, false);
	local again_alone = run(shape, false, true);
	local again, again_events = run(shape, true, true);
	assert(#reused_events == n and #again_events == n, "one <routed> per message");
	-- The same message either way (one table, one attribute order here).
	for i = 1, n do
		assert(#reused_events[i] == #again_events[i], ("%s %d: %s | %s"):format(name, i, reused_events[i], again_events[i]));
	end
	local a, b = (again - again_alone) / n, (reused - reused_alone) / n;
	print(("%s: %s, %d delivered messages: the module adds %.0f Lua instructions each serialising the message again, %.0f reusing the written bytes (%.0f fewer)"):format(
		source, name, n, a, b, a - b));
end
