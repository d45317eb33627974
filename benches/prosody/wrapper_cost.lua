-- What Prosody's event wrapper costs per routed message, against a plain hook: mod_readtrack
-- learns that a message's routing ended by wrapping message/bare and message/full
-- (module:wrap_event, util/events.lua's add_wrapper), since mod_message ends the event at
-- priority -1 and neither 0.12 nor 13 fires an event after routing. A wrapper-free design would
-- keep a plain hook at the start instead; this is the most it could save. Prosody's own
-- util.events from the given tree fires one message/full event with a handler standing in for
-- mod_message (priority -1, returns true), and either nothing more, a plain hook at priority
-- 1000 (a function that does nothing), or a wrapper that passes the event on.
--
--   lua5.4 benches/prosody/wrapper_cost.lua /usr/lib/prosody [N] [HEAP_MB]
--   lua5.4 benches/prosody/wrapper_cost.lua target/prosody13/usr/lib/prosody [N] [HEAP_MB]
--
-- Prints, for the hook and the wrapper, what each adds to one fire over the fire alone: Lua VM
-- instructions and bytes allocated (both exact), and CPU time (best of five interleaved rounds of
-- N fires, the collector set as Prosody sets it: incremental, util/startup.lua's threshold 105
-- and speed 500, so collecting what the fires allocate is in the time). The collector marks the
-- whole live heap about every 5% of it allocated, so what an allocated byte costs grows with the
-- heap's size and shape: HEAP_MB (0) keeps that many MB of small tables alive, as a server's
-- sessions, rosters and stanzas are, while the fires run.
-- A chat message of the load bench is two routings: the message and its receipt.

local source, n, heap_mb = arg[1], tonumber(arg[2] or 1000000), tonumber(arg[3] or 0);
assert(source, "usage: lua5.4 wrapper_cost.lua PROSODY_SOURCE_DIR [N]");
package.path = source .. "/?.lua;" .. package.path;
package.cpath = source .. "/?.so;" .. package.cpath;
local events = require "util.events";

local function make(kind)
	local e = events.new();
	e.add_handler("message/full", function() return true; end, -1);
	if kind == "hook" then
		e.add_handler("message/full", function() end, 1000);
	elseif kind == "wrapper" then
		e.add_wrapper("message/full", function(handlers, name, data) return handlers(name, data); end);
	end
	return e;
end

local kinds = { "alone", "hook", "wrapper" };
collectgarbage("incremental", 105, 500);
local live = {};
while collectgarbage("count") < heap_mb * 1024 do
	local i = #live + 1;
	live[i] = { name = "item", attr = { id = tostring(i) }, tags = {} };
end
local origin, stanza = {}, {};

-- Each fire gets a table shaped as Prosody's (origin, stanza, to_self), as core_post_stanza makes.
local function fire(e, count)
	for _ = 1, count do
		e.fire_event("message/full", { origin = origin, stanza = stanza, to_self = false });
	end
end

local instructions, bytes, ns = {}, {}, {};
for _, kind in ipairs(kinds) do
	local e = make(kind);
	fire(e, 100); -- handler indexes built
	local count = 0;
	debug.sethook(function() count = count + 1; end, "", 1);
	fire(e, 1000);
	debug.sethook();
	instructions[kind] = count / 1000;
	collectgarbage();
	collectgarbage("stop");
	local before = collectgarbage("count");
	fire(e, 1000);
	bytes[kind] = (collectgarbage("count") - before) * 1024 / 1000;
	collectgarbage("restart");
end
for _ = 1, 5 do
	for _, kind in ipairs(kinds) do
		local e = make(kind);
		fire(e, 100);
		collectgarbage();
		local t = os.clock();
		fire(e, n);
		local per = (os.clock() - t) / n * 1e9;
		ns[kind] = math.min(ns[kind] or math.huge, per);
	end
end
for _, kind in ipairs({ "hook", "wrapper" }) do
	print(("%s, %d MB live: a %s adds %.0f Lua instructions, %.0f bytes and %.1f ns to one fire (the fire alone: %.0f instructions, %.0f bytes, %.1f ns)"):format(
		source, heap_mb, kind, instructions[kind] - instructions.alone, bytes[kind] - bytes.alone,
		ns[kind] - ns.alone, instructions.alone, bytes.alone, ns.alone));
end
