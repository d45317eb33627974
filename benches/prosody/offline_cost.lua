-- Lua instructions mod_readtrack adds to one message for a user with no session online: the
-- module takes it from offline handling (message/offline/handle), reports it in a <routed> event
-- and, once readtrack says it confirms claims (<accepts events='... claims'>), keeps it until
-- readtrack's <durable> after its commit, sent here once per `BATCH` (64) messages as a group
-- commit does. The real module is loaded under stub_prosody.lua; the same flow runs with and
-- without it (without it nothing handles offline delivery: the stub has no mod_offline), and the
-- difference is what the module adds. Then readtrack's connection ends with one batch
-- unconfirmed: the claims it still held are handed to offline storage (counted on their own).
--
--   lua5.4 benches/prosody/offline_cost.lua /usr/lib/prosody [N]
--   READTRACK_MODULE=/tmp/old.lua lua5.4 benches/prosody/offline_cost.lua /usr/lib/prosody [N]
--
-- READTRACK_MODULE: another copy of the module (an older commit's, for a before/after; one
-- without claims gets no <durable>, which it would not know).

local source, n = arg[1], tonumber(arg[2] or 4000);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");
local hook_ns = "urn:readtrack:hook:0";
local batch, window = 64, 8;

local function run(with_module)
	local stub = load_stub(source, with_module and module_path or nil);
	local alice = stub.session("alice@localhost/load");
	local stored = 0;
	stub.hosts.localhost.events.add_handler("message/offline/handle", function() stored = stored + 1; return true; end, -1);
	if with_module then
		stub.accepts("signal done-list claims");
		stub.turn();
	end
	local message_xml = {};
	for i = 1, n do
		message_xml[i] = ("<message id='off%d' type='chat' to='bob@localhost'><request xmlns='urn:xmpp:receipts'/><body>offline message %d</body></message>"):format(i, i);
	end
	local messages = stub.parse(message_xml);
	local before = #stub.emitted;
	local counts = { message = 0, durable = 0 };
	counts.message = stub.count(function()
		for i = 1, n do
			stub.post(alice, messages[i]);
			if i % window == 0 or i == n then stub.turn(); end
		end
	end);
	local claims = {};
	for _, event in ipairs(stub.events(before)) do
		local claim = event:match("<routed [^>]*claim='(%d+)'");
		if claim then claims[#claims + 1] = tonumber(claim); end
	end
	-- readtrack confirms every batch but the last, which the link's end hands back.
	local durable_xml = {};
	for first = 1, #claims - batch, batch do
		durable_xml[#durable_xml + 1] = ("<message from='readtrack.localhost' to='localhost'><durable xmlns='%s' from='%d' upto='%d'/></message>"):format(
			hook_ns, claims[first], claims[math.min(first + batch - 1, #claims)]);
	end
	local durables = stub.parse(durable_xml, "jabber:component:accept");
	counts.durable = stub.count(function()
		for _, command in ipairs(durables) do stub.command(command); stub.turn(); end
	end);
	local stored_before = stored;
	counts.hand_back = stub.count(function()
		stub.hosts["readtrack.localhost"].events.fire_event("component-disconnected",
			{ session = stub.hosts["readtrack.localhost"].modules.component.session, reason = "bench" });
	end);
	return counts, #claims, #durables, stored_before, stored - stored_before;
end

local alone, _, _, stored_alone = run(false);
local with, claims, durables, stored_with, handed_back = run(true);
assert(stored_alone == n, "without the module every message is stored offline");
assert(stored_with == 0, "with the module none is stored offline while readtrack is there");
local unconfirmed = claims - math.min(claims, durables * batch);
assert(claims == 0 or handed_back == unconfirmed, ("handed back %d of %d unconfirmed"):format(handed_back, unconfirmed));
print(("%s: %d messages to an offline user: the module adds %.0f Lua instructions per message (routing and claim +%.0f, <durable> +%.0f; alone %.0f); %d claimed, %d <durable>; at the link's end %d handed back, %.0f instructions each"):format(
	source, n, (with.message + with.durable - alone.message) / n, (with.message - alone.message) / n,
	with.durable / n, alone.message / n, claims, durables, handed_back,
	handed_back > 0 and with.hand_back / handed_back or 0));
