-- mod_lprof: a sampling profiler of Prosody's Lua code, for the load bench only
-- (`LOAD_LUA_PROFILE=1 cargo bench --bench load`). Never load it in production: the count hook
-- slows the whole server down.
--
-- Every `lprof_period` VM instructions it records the running line (self) and every function on
-- the stack (inclusive), in the main thread and in every coroutine created after it loaded
-- (Prosody runs each session's stanzas in a util.async runner, a coroutine). Time spent inside C
-- functions (expat, string.format, socket writes) executes no VM instructions and is not
-- sampled: read the figures as shares of Lua work. The report is rewritten every 2 s to
-- `lprof_out`.

-- Listed in the global modules_enabled, a module loads once per host: profile once per process.
if prosody.readtrack_lprof then return; end
prosody.readtrack_lprof = true;

local out = assert(module:get_option_string("lprof_out"), "lprof_out is required");
local period = module:get_option_number("lprof_period", 1000);

local getinfo = debug.getinfo;
local self_counts, incl_counts, names, total = {}, {}, {}, 0;

local function hook()
	total = total + 1;
	local top = getinfo(2, "Sl");
	if not top then return; end
	local line = top.short_src .. ":" .. tostring(top.currentline);
	self_counts[line] = (self_counts[line] or 0) + 1;
	local seen = {};
	for level = 2, 60 do
		local info = getinfo(level, "Sn");
		if not info then break; end
		local key = info.short_src .. ":" .. tostring(info.linedefined);
		if not seen[key] then
			seen[key] = true;
			incl_counts[key] = (incl_counts[key] or 0) + 1;
			if info.name and not names[key] then names[key] = info.name; end
		end
	end
end

-- Modules load inside a startup coroutine; the main thread is registry[1] (LUA_RIDX_MAINTHREAD).
-- util.async gives each new runner the hook of the thread creating it, so hooking the main
-- thread covers the sessions' runners too; the wrapper below covers other coroutines.
debug.sethook(debug.getregistry()[1], hook, "", period);
debug.sethook(hook, "", period);
local co_create = coroutine.create;
coroutine.create = function(f) -- luacheck: ignore 122
	local co = co_create(f);
	debug.sethook(co, hook, "", period);
	return co;
end

local function top(counts, n)
	local keys = {};
	for k in pairs(counts) do keys[#keys + 1] = k; end
	table.sort(keys, function(a, b) return counts[a] > counts[b]; end);
	local lines = {};
	for i = 1, math.min(n, #keys) do
		local k = keys[i];
		lines[#lines + 1] = string.format("%6.2f%%  %8d  %s %s", 100 * counts[k] / total, counts[k], k, names[k] or "");
	end
	return table.concat(lines, "\n");
end

local function dump()
	local f = io.open(out, "w");
	if f then
		f:write(("samples: %d (one per %d VM instructions)\n\n"):format(total, period));
		f:write("== inclusive (function defined at) ==\n", top(incl_counts, 80), "\n\n");
		f:write("== self (line) ==\n", top(self_counts, 60), "\n");
		f:close();
	end
	return 2;
end

module:add_timer(2, dump);
local f2 = io.open(out .. ".offline", "a");
module:add_timer(1, function()
for name, h in pairs(prosody.hosts) do
	f2:write("host ", name, "\n");
	module:hook_object_event(h.events, "message/offline/handle", function(e)
		f2:write(tostring(e.stanza), "\n"); f2:flush();
	end, 50);
end
end);
