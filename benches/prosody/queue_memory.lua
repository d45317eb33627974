-- The heap mod_readtrack's event queue keeps once its events are written. The queue's table keeps
-- the pieces of written events in its slots (overwritten by the next events, never sent again)
-- until the queues written since the slots were last cleared held `stale_bytes_kept` (64 KiB)
-- together; this measures that bound. Turns of Prosody's loop each route some small messages and
-- then one large one, so large pieces stand in high slots that the next, shorter queues do not
-- overwrite. After each turn's write, and a full collection, the heap is compared with the heap
-- after a first turn whose queue was cleared. The real module under stub_prosody.lua, as the cost
-- benches, on the Prosody line whose sources are given.
--
--   lua5.4 benches/prosody/queue_memory.lua /usr/lib/prosody
--
-- Prints the most the heap held after a write beyond that first turn's (tests/lua_cost.rs holds
-- it within the bound and a little slack for the collector's own tables).

local source = arg[1];
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");

local function heap()
	collectgarbage("collect");
	collectgarbage("collect");
	return collectgarbage("count") * 1024;
end

local stub = load_stub(source, module_path);
local alice = stub.session("alice@localhost/a");
local bob = stub.session("bob@localhost/b");
stub.accepts("signal done-list routed-signal inherited-namespace batched");
stub.turn();

local sent, events = 0, 0;
-- One turn: `small` chat messages to bob, then one whose body is `large` bytes, then the write.
local function turn(small, large)
	local function post(body)
		sent = sent + 1;
		stub.post(alice, stub.parse({ ("<message id='q%d' type='chat' to='%s'><body>%s</body></message>")
			:format(sent, bob.full_jid, body) })[1]);
	end
	for i = 1, small do post("small message " .. i); end
	if large then post(("x"):rep(large)); end
	stub.turn();
	for _, event in ipairs(stub.events(0)) do
		for _ in event:gmatch("<routed ") do events = events + 1; end
	end
	for i = #stub.emitted, 1, -1 do stub.emitted[i] = nil; end
	alice.written, bob.written = nil, nil;
end

-- A queue past the bound first: its slots are cleared, and the table has grown to its size.
turn(200);
local base, most = heap(), 0;
for _, shape in ipairs({ { 60, 30000 }, { 40, 30000 }, { 20, 30000 }, { 10, 30000 }, { 0, 30000 },
	{ 50, 20000 }, { 30, 20000 }, { 1 }, { 1 }, { 1 } }) do
	turn(shape[1], shape[2]);
	local kept = heap() - base;
	if kept > most then most = kept; end
end
assert(events == sent, ("%d routed events for %d messages"):format(events, sent));
print(("%s: after a write the event queue kept at most %.1f KiB (%d messages)"):format(source, most / 1024, sent));
