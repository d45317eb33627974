-- mod_readtrack tracks a message's routing from one handler at the top of message/bare and
-- message/full that runs the handlers below it itself (the tracker; it replaced
-- module:wrap_event, whose closure per fire was a third of the module's allocations). This
-- checks that the event still goes as util/events would run it without the module, in the cases
-- where running the rest by hand could differ, on the Prosody line whose sources are given (the
-- real module and util/events under stub_prosody.lua):
--
-- 1. every handler below runs once, in order of priority, and the first answer ends the event;
-- 2. where none answers (no mod_message), each still runs once and the event reads as unhandled;
-- 3. a handler that raises: the error reaches the caller as it would, nothing is reported for
--    that message, and the next message is tracked and reported as usual;
-- 4. a message routed by a handler while another is being routed: each reported with the
--    session it was written to.
--
--   lua5.4 benches/prosody/routing_tracker.lua /usr/lib/prosody
--
-- Prints one line per case and fails on the first that does not hold.

local source = arg[1];
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");

local stub = load_stub(source, module_path);
local alice = stub.session("alice@localhost/a");
local bob = stub.session("bob@localhost/b");
local erin = stub.session("erin@localhost/e");
stub.accepts("signal done-list routed-signal inherited-namespace batched");
stub.turn();

local function message(id, to)
	return stub.parse({ ("<message id='%s' type='chat' to='%s'><body>x</body></message>"):format(id, to) })[1];
end

-- The <routed> events written since `from`, by message id: the sessions each names.
local function routed(from)
	local out = {};
	for _, event in ipairs(stub.events(from)) do
		for body in event:gmatch("<routed[ >].-</routed>") do
			local id = body:match("<message [^>]-id='([^']*)'");
			local sessions = {};
			for jid in body:gmatch("<session jid='([^']*)'") do sessions[#sessions + 1] = jid; end
			out[id] = table.concat(sessions, " ");
		end
	end
	return out;
end

local function check(name, ok, detail)
	print(("%s: %s%s"):format(name, ok and "holds" or "DOES NOT HOLD", detail and (" (" .. detail .. ")") or ""));
	assert(ok, name);
end

local bus = stub.hosts[stub.host].events;

-- 1. Order and the first answer.
do
	local ran = {};
	local function at(priority, answer)
		local handler = function() ran[#ran + 1] = priority; return answer; end;
		bus.add_handler("message/full", handler, priority);
		return handler;
	end
	local a, b, c = at(5), at(0.5), at(-2, true); -- c is below mod_message's -1: never runs
	local before = #stub.emitted;
	stub.post(alice, message("t1", bob.full_jid));
	stub.turn();
	bus.remove_handler("message/full", a); bus.remove_handler("message/full", b); bus.remove_handler("message/full", c);
	check("1. the handlers below run once each, in order, until one answers",
		table.concat(ran, " ") == "5 0.5" and routed(before).t1 == bob.full_jid,
		"ran " .. table.concat(ran, " ") .. "; routed to " .. tostring(routed(before).t1));
end

-- 2. No handler answers.
do
	local deliver = bus.get_handlers("message/full");
	local mod_message;
	for _, handler in ipairs(deliver) do mod_message = handler; end -- the stand-in, at -1, is last
	bus.remove_handler("message/full", mod_message);
	local runs = 0;
	local counter = function() runs = runs + 1; end;
	bus.add_handler("message/full", counter, 0);
	local answer = bus.fire_event("message/full", { origin = alice, stanza = message("t2", bob.full_jid) });
	bus.remove_handler("message/full", counter);
	bus.add_handler("message/full", mod_message, -1);
	check("2. with no answer, each handler runs once and the event is unhandled", runs == 1 and not answer,
		("ran %d, answered %s"):format(runs, tostring(answer)));
end

-- 3. A handler that raises.
do
	local raising = function(event)
		if event.stanza.attr.id == "t3" then error("a handler's error"); end
	end;
	bus.add_handler("message/full", raising, 0);
	local before = #stub.emitted;
	local ok, err = pcall(stub.post, alice, message("t3", bob.full_jid));
	stub.post(alice, message("t4", bob.full_jid));
	stub.turn();
	bus.remove_handler("message/full", raising);
	local got = routed(before);
	check("3. a handler's error reaches the caller; the next message is tracked as usual",
		not ok and tostring(err):find("a handler's error", 1, true) ~= nil and got.t3 == nil and got.t4 == bob.full_jid,
		("error %s; t3 %s, t4 %s"):format(tostring(err), tostring(got.t3), tostring(got.t4)));
end

-- 4. A message routed while another is.
do
	local nesting = function(event)
		if event.stanza.attr.id == "t5" then stub.post(alice, message("t6", erin.full_jid)); end
	end;
	bus.add_handler("message/full", nesting, 0);
	local before = #stub.emitted;
	stub.post(alice, message("t5", bob.full_jid));
	stub.turn();
	bus.remove_handler("message/full", nesting);
	local got = routed(before);
	check("4. a message routed inside another's routing: each with its own session",
		got.t5 == bob.full_jid and got.t6 == erin.full_jid,
		("t5 %s, t6 %s"):format(tostring(got.t5), tostring(got.t6)));
end
