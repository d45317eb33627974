-- The real contrib/prosody/mod_readtrack.lua, loaded outside a server for the Lua cost benches
-- (event_cost.lua, ack_cost.lua): Prosody's own libraries (util.stanza, util.events,
-- util.filters, util.xmppstream, util.jid) from the source folder given, and small stand-ins
-- for what a running server provides: the `module` API the module uses, the hosts and their
-- event buses, c2s sessions whose send() is core/sessionmanager.lua's (stanzas/out filters, then
-- bytes/out on the serialisation; the socket write and the debug log left out), and a connected
-- readtrack component whose send() keeps what the module emits. The module's hooks run as
-- Prosody runs them (util.events, priorities and wrappers), so a change to the module is
-- measured as it is, not as a copy of it.
--
--   local stub = dofile("benches/prosody/stub_prosody.lua")(source, "contrib/prosody/mod_readtrack.lua")
--
-- The stand-ins are only as faithful as these benches need: no storage beyond a table, no
-- timers but those stub.turn() runs, no network backend (the link backlog is never counted), no
-- mod_mam, no carbons.

return function(source, module_path, options)
	options = options or {};
	-- 0.12 names its modules util.*, 13 prosody.util.* (from the folder above the sources).
	package.path = source .. "/?.lua;" .. source .. "/../?.lua;" .. package.path;
	package.cpath = source .. "/?.so;" .. source .. "/../?.so;" .. package.cpath;
	-- 13's loader makes util.x and prosody.util.x one module, as in the server.
	local loader = loadfile(source .. "/loader.lua");
	if loader and not package.loaded["prosody.loader"] then
		loader("prosody.loader");
		package.loaded["prosody.loader"] = true;
	end
	local st = require "util.stanza";
	local new_events = require "util.events".new;
	local filters = require "util.filters";
	local xmppstream = require "util.xmppstream";

	local host, component = options.host or "localhost", options.component or "readtrack.localhost";

	-- What the module requires that needs a running server.
	package.loaded["net.server"] = { get_backend = function() return "stub"; end };
	package.loaded["core.usermanager"] = { user_exists = function() return true; end };

	local host_events, component_events, global_events = new_events(), new_events(), new_events();
	local emitted = {}; -- what the module wrote to readtrack, in order
	local component_session = {
		type = "component", host = component,
		send = function(data) emitted[#emitted + 1] = tostring(data); end,
	};
	local hosts = {
		[host] = { host = host, events = host_events, modules = {}, sessions = {} },
		[component] = { host = component, events = component_events,
			modules = { component = { connected = true, session = component_session } } },
	};
	local full_sessions = {};
	local stores = {};

	local module_api = { host = host, name = "readtrack" };
	function module_api:get_option_string(_, default) return options[_] or default; end
	function module_api:get_option_number(_, default) return options[_] or default; end
	function module_api:log() end
	function module_api:hook(name, handler, priority) host_events.add_handler(name, handler, priority); end
	function module_api:hook_global(name, handler, priority) global_events.add_handler(name, handler, priority); end
	function module_api:hook_object_event(object, name, handler, priority) object.add_handler(name, handler, priority); end
	function module_api:wrap_event(name, wrapper) host_events.add_wrapper(name, wrapper); end
	function module_api:fire_event(name, data) return host_events.fire_event(name, data); end
	local timers = {};
	function module_api:add_timer(_, callback) timers[#timers + 1] = callback; end
	function module_api:send() end
	function module_api:open_store(name)
		local data = stores[name] or {};
		stores[name] = data;
		return { get = function(_, key) return data[key]; end, set = function(_, key, value) data[key] = value; return true; end };
	end

	local env = setmetatable({ module = module_api, prosody = { hosts = hosts, full_sessions = full_sessions } },
		{ __index = _G });
	if module_path then -- nil: the server without the module, for a baseline
		local chunk = assert(loadfile(module_path, "t", env));
		chunk();
		if module_api.load then module_api.load(); end
		component_events.fire_event("component-authenticated", { session = component_session });
	end

	local stub = { st = st, host = host, component = component, emitted = emitted, hosts = hosts,
		events = host_events };

	-- A bound c2s session of `full_jid`, with sessionmanager's send and the module's filters
	-- (resource-bind). `written` keeps the last bytes written to it, `writes` counts the writes.
	function stub.session(full_jid)
		local username = full_jid:match("^([^@]+)@");
		local session = { type = "c2s", host = host, username = username, full_jid = full_jid,
			resource = full_jid:match("/(.*)$"), conn = {}, presence = true, writes = 0 };
		local filter = filters.initialize(session);
		function session.send(t)
			if t.name then t = filter("stanzas/out", t); end
			if t then
				t = filter("bytes/out", tostring(t));
				if t then session.written, session.writes = t, session.writes + 1; end
			end
			return true;
		end
		full_sessions[full_jid] = session;
		local user = hosts[host].sessions[username] or { sessions = {} };
		hosts[host].sessions[username] = user;
		user.sessions[session.resource] = session;
		host_events.fire_event("resource-bind", { session = session });
		return session;
	end

	-- What Prosody's mod_message does once the message/* handlers above it let the message through
	-- (priority -1): a full JID's session gets it, a bare JID's sessions all do; none: offline.
	local function deliver(event)
		local stanza, to = event.stanza, event.stanza.attr.to;
		local session = to and full_sessions[to];
		if session then session.send(stanza); return true; end
		local user = hosts[host].sessions[to and to:match("^([^@/]+)@") or event.origin.username];
		local any = false;
		if user and not (to and to:find("/", 1, true)) then
			for _, s in pairs(user.sessions) do s.send(stanza); any = true; end
		end
		if not any then host_events.fire_event("message/offline/handle", event); end
		return true;
	end
	for _, kind in ipairs({ "bare", "full" }) do host_events.add_handler("message/" .. kind, deliver, -1); end

	-- Parses stanzas as a stream of `default_ns` hands them to Prosody.
	function stub.parse(xml_list, default_ns)
		local stanzas = {};
		local cb = { stream_ns = "http://etherx.jabber.org/streams", stream_tag = "stream",
			default_ns = default_ns or "jabber:client" };
		function cb.streamopened(session) session.notopen = nil; end
		function cb.handlestanza(_, stanza) stanzas[#stanzas + 1] = stanza; end
		local stream = xmppstream.new({ notopen = true }, cb);
		stream:feed("<stream:stream xmlns='" .. cb.default_ns .. "' xmlns:stream='http://etherx.jabber.org/streams'>");
		for _, xml in ipairs(xml_list) do stream:feed(xml); end
		assert(#stanzas == #xml_list, "parsed " .. #stanzas .. " of " .. #xml_list);
		return stanzas;
	end

	-- core_process_stanza and core_post_stanza for a message a c2s session sent (0.12 and 13).
	function stub.post(origin, stanza)
		stanza.attr.from = origin.full_jid;
		local to = stanza.attr.to;
		local node, to_host, resource = (require "util.jid").split(to);
		local to_type, to_self = "/host", nil;
		if node then
			to_type = resource and "/full" or "/bare";
			if not resource and node == origin.username and to_host == origin.host then
				stanza.attr.to, to_self = nil, true;
			end
		elseif not to_host then
			to_type, to_self = "/bare", true;
		end
		local event = { origin = origin, stanza = stanza, to_self = to_self };
		if host_events.fire_event("pre-message" .. to_type, event) then return; end
		host_events.fire_event("message" .. to_type, event);
	end

	-- A command message from readtrack, as the component stream hands it over.
	function stub.command(stanza)
		return host_events.fire_event("message/host", { origin = component_session, stanza = stanza });
	end

	-- readtrack saying which event forms it reads (`<accepts events='...'/>`), as it does once
	-- per connection.
	function stub.accepts(events)
		return stub.command(stub.parse({ "<message from='" .. component .. "' to='" .. host
			.. "'><accepts xmlns='urn:readtrack:hook:0' events='" .. events .. "'/></message>" },
			"jabber:component:accept")[1]);
	end

	-- The events the module wrote since `from` writes (one write may hold several events, each
	-- a <message from=host to=component>).
	function stub.events(from)
		local open = "<message from='" .. host .. "' to='" .. component .. "'>";
		local out = {};
		for i = (from or 0) + 1, #emitted do
			local data, at = emitted[i], 1;
			while at do
				local next_at = data:find(open, at + 1, true);
				out[#out + 1] = data:sub(at, next_at and next_at - 1 or #data);
				at = next_at;
			end
		end
		return out;
	end

	-- The end of a turn of Prosody's loop: the timers the module set meanwhile run (all of them
	-- once, whatever their delay: the benches set none but the event flush's, of no delay).
	function stub.turn()
		local due = timers;
		timers = {};
		for _, callback in ipairs(due) do callback(); end
	end

	-- Instructions of the Lua VM that f() runs (C functions count as the call only), and the
	-- bytes it allocated, less what it freed at once (a table's old parts when it grows): what
	-- it adds to the collector's debt. Prosody runs its incremental collector with a pause of
	-- 105% (util/startup.lua, `threshold`), so every allocated byte costs it marking work in
	-- proportion: under load the collector is half of Prosody's CPU (docs/performance.md).
	--
	-- `stub.lines`, when a table: each instruction is also counted for the line running it, by
	-- `source:line` (a line profile; slow, and what it allocates itself spoils the bytes).
	function stub.count(f)
		local c = 0;
		collectgarbage("collect");
		collectgarbage("stop");
		local kib = collectgarbage("count");
		local lines, alloc_lines, getinfo = stub.lines, stub.alloc_lines, debug.getinfo;
		if alloc_lines then
			-- `stub.alloc_lines`, when a table: the bytes allocated while each line ran (the
			-- C functions it called included), by `source:line`; no instruction count then.
			local last_at, last_kib;
			debug.sethook(function(_, line)
				local at_kib = collectgarbage("count");
				if last_at then alloc_lines[last_at] = (alloc_lines[last_at] or 0) + (at_kib - last_kib) * 1024; end
				last_at = getinfo(2, "S").short_src .. ":" .. line;
				last_kib = collectgarbage("count");
			end, "l");
		elseif lines then
			debug.sethook(function()
				c = c + 1;
				local info = getinfo(2, "Sl");
				if info then
					local at = info.short_src .. ":" .. info.currentline;
					lines[at] = (lines[at] or 0) + 1;
				end
			end, "", 1);
		else
			debug.sethook(function() c = c + 1; end, "", 1);
		end
		f();
		debug.sethook();
		local bytes = (collectgarbage("count") - kib) * 1024;
		collectgarbage("restart");
		return c, bytes;
	end

	-- The CPU seconds f() takes, with the collector running as Prosody runs it (incremental,
	-- util/startup.lua's threshold 105 and speed 500), so what the allocations cost to collect is
	-- in the time: instructions alone miss it, and count a C function's work (ipairs' and
	-- next's calls, a string's hashing) as one instruction.
	function stub.time(f)
		collectgarbage("incremental", 105, 500);
		collectgarbage("collect");
		local started = os.clock();
		f();
		return os.clock() - started, 0;
	end

	stub.turn(); -- what loading wrote (the snapshot) is not part of what a bench counts
	return stub;
end
