-- Lua instructions mod_readtrack adds to one chat message of the load bench (benches/load.rs):
-- the sender's message (a chat message asking for a receipt), the receiver's XEP-0184 receipt
-- back and, in the seed dialect, readtrack's compact server ack (10013) to the sender, packed
-- `ACKS` (64) to a command message as a group commit sends them. The real module is loaded
-- under stub_prosody.lua; the same flow runs with and without it, and the difference is what the
-- module adds (its hooks, filters, decisions and events; C functions count as their call only,
-- as in the load bench's Lua profile). The events it wrote are counted by kind.
--
--   lua5.4 benches/prosody/chat_cost.lua /usr/lib/prosody [N] [seed|xep] [TURN]
--   lua5.4 benches/prosody/chat_cost.lua target/prosody13/usr/lib/prosody [N] [seed|xep] [TURN]
--
-- READTRACK_ACCEPTS: the event forms the stand-in readtrack accepts (`<accepts events>`; default
-- "signal done-list routed-signal inherited-namespace batched", what `readtrack serve` says);
-- "signal done-list routed-signal inherited-namespace" one older than batched (a <message>
-- around each event); "signal done-list" measures the module with a readtrack older than
-- routed-signal (each receipt's <signal> on its own), "signal done-list routed-signal" one older
-- than inherited-namespace (each written message copied to name its namespace).
--
-- READTRACK_LINE_PROFILE=K: also the K lines of the module that run the most VM instructions per
-- chat message (with the module loaded, all parts together), with their text; the byte figures
-- are then off (the profile allocates).
--
-- READTRACK_ALLOC_PROFILE=K: instead, the K lines of the module that allocate the most bytes per
-- chat message (with what the C functions they call allocate), with their text.
--
-- READTRACK_TIME=K: CPU time instead of instructions: K rounds, each the flow without the module
-- and then with it, and the least of each part over the rounds (the machine is noisy; the
-- collector runs as Prosody's, so the time includes collecting what the module allocates).
--
-- TURN (8): the messages (and then the receipts) one turn of Prosody's loop handles; a long turn
-- is a loop kept busy, whose timers (the module's end-of-turn write) wait. The last line gives
-- the largest single write to readtrack.

local source, n, dialect = arg[1], tonumber(arg[2] or 4000), arg[3] or "seed";
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
-- READTRACK_MODULE: another copy of the module (an older commit's, for a before/after).
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");
local hook_ns = "urn:readtrack:hook:0";
local per_command_message, window = 64, tonumber(arg[4] or 8);
local accepts = os.getenv("READTRACK_ACCEPTS") or "signal done-list routed-signal inherited-namespace batched";

local line_profile = tonumber(os.getenv("READTRACK_LINE_PROFILE") or "");
local time_rounds = tonumber(os.getenv("READTRACK_TIME") or "");
local alloc_profile = tonumber(os.getenv("READTRACK_ALLOC_PROFILE") or "");
if alloc_profile then line_profile = alloc_profile; end
local lines = {};

local function run(with_module)
	local stub = load_stub(source, with_module and module_path or nil);
	if with_module and alloc_profile then
		stub.alloc_lines = lines;
	elseif with_module and line_profile then
		stub.lines = lines;
	end
	local alice = stub.session("alice@localhost/load");
	local bob = stub.session("bob@localhost/load");
	local commands = {};
	if with_module then
		stub.accepts(accepts);
		stub.turn();
	end
	local message_xml, receipt_xml, ack_xml = {}, {}, {};
	for i = 1, n do
		message_xml[i] = ("<message id='p1m%d' type='chat' to='%s'><request xmlns='urn:xmpp:receipts'/><body>load message %d</body></message>"):format(i, bob.full_jid, i);
		receipt_xml[i] = ("<message id='rc-p1m%d' to='%s'><received xmlns='urn:xmpp:receipts' id='p1m%d'/></message>"):format(i, alice.full_jid, i);
		ack_xml[#ack_xml + 1] = ("<ack xmlns='%s' to='%s' message-id='p1m%d' time='2026-12-02T10:00:00.%03dZ'/>"):format(hook_ns, alice.full_jid, i, i % 1000);
		if #ack_xml == per_command_message or i == n then
			commands[#commands + 1] = "<message from='readtrack.localhost' to='localhost'>" .. table.concat(ack_xml) .. "</message>";
			ack_xml = {};
		end
	end
	-- Parsing is Prosody's, the same with and without the module: left out of the counts.
	local messages = stub.parse(message_xml);
	local receipts = stub.parse(receipt_xml);
	local command_stanzas = stub.parse(commands, "jabber:component:accept");
	local counts, bytes = {}, {};
	local measure = time_rounds and stub.time or stub.count;
	local before = #stub.emitted;
	-- A turn of Prosody's loop handles what one read brings: a sender's window of messages
	-- (benches/load.rs: 8), a receiver's receipts for them, one command message.
	counts.message, bytes.message = measure(function()
		for i = 1, n do
			stub.post(alice, messages[i]);
			if i % window == 0 or i == n then stub.turn(); end
		end
	end);
	assert(bob.written and bob.written:find("load message " .. n, 1, true), "bob got the messages");
	counts.receipt, bytes.receipt = measure(function()
		for i = 1, n do
			stub.post(bob, receipts[i]);
			if i % window == 0 or i == n then stub.turn(); end
		end
	end);
	assert(alice.written and alice.written:find("rc-p1m" .. n, 1, true), "alice got the receipts");
	if with_module and dialect == "seed" then
		counts.ack, bytes.ack = measure(function()
			for _, command in ipairs(command_stanzas) do
				stub.command(command);
				stub.turn();
			end
		end);
		assert(alice.written:find("10013", 1, true), "alice got the acks");
		-- Prosody's parsing of the command messages (util.xmppstream: a stanza object per <ack>),
		-- the same for any module whose external process answers in XML: not in the sums above.
		counts.parse, bytes.parse = stub.count(function() stub.parse(commands, "jabber:component:accept"); end);
	else
		counts.ack, bytes.ack = 0, 0;
	end
	local kinds = {};
	-- Every event of each message (one, or several once readtrack accepts `batched`): the
	-- children of the outer <message>.
	for _, message in ipairs(stub.events(before)) do
		local depth = 0;
		for close, name, empty in message:gmatch("<(/?)([%w:-]+)[^>]-(/?)>") do
			if close == "/" then
				depth = depth - 1;
			else
				if depth == 1 then kinds[name] = (kinds[name] or 0) + 1; end
				if empty == "" then depth = depth + 1; end
			end
		end
	end
	local largest = 0;
	for i = before + 1, #stub.emitted do largest = math.max(largest, #stub.emitted[i]); end
	return counts, kinds, #stub.emitted - before, bytes, largest;
end

if time_rounds then
	local least = { alone = {}, with = {} };
	for _ = 1, time_rounds do
		for side, with_module in pairs({ alone = false, with = true }) do
			local counts = run(with_module);
			for part, seconds in pairs(counts) do
				least[side][part] = math.min(least[side][part] or math.huge, seconds);
			end
		end
	end
	local function per_message(side, part) return (least[side][part] or 0) / n * 1e6; end
	local added, parts = 0, {};
	for _, part in ipairs({ "message", "receipt", "ack" }) do
		local part_added = per_message("with", part) - per_message("alone", part);
		added = added + part_added;
		parts[#parts + 1] = ("%s +%.2f"):format(part, part_added);
	end
	print(("%s: %s dialect, %d chat messages, least of %d rounds: the module adds %.2f µs of CPU per chat message (%s; alone %.2f)"):format(
		source, dialect, n, time_rounds, added, table.concat(parts, ", "),
		per_message("alone", "message") + per_message("alone", "receipt")));
	os.exit(0);
end

local alone, _, _, alone_bytes = run(false);
local with, kinds, writes, with_bytes, largest = run(true);
local total, total_bytes = 0, 0;
local parts, byte_parts = {}, {};
for _, part in ipairs({ "message", "receipt", "ack" }) do
	local added = with[part] - (alone[part] or 0);
	local added_bytes = with_bytes[part] - (alone_bytes[part] or 0);
	total, total_bytes = total + added, total_bytes + added_bytes;
	parts[#parts + 1] = ("%s +%.0f"):format(part, added / n);
	byte_parts[#byte_parts + 1] = ("%s +%.0f"):format(part, added_bytes / n);
end
local events = {};
for kind, count in pairs(kinds) do events[#events + 1] = ("%s %d"):format(kind, count); end
table.sort(events);
print(("%s: %s dialect, %d chat messages: the module adds %.0f Lua instructions per chat message (%s; alone %.0f); %d writes to readtrack; events: %s"):format(
	source, dialect, n, total / n, table.concat(parts, ", "), (alone.message + alone.receipt) / n, writes, table.concat(events, ", ")));
print(("%s: %s dialect: the module adds %.0f bytes allocated per chat message (%s; alone %.0f)%s"):format(
	source, dialect, total_bytes / n, table.concat(byte_parts, ", "), (alone_bytes.message + alone_bytes.receipt) / n,
	with.parse and (("; parsing the command messages %.0f instructions, %.0f bytes per chat message"):format(with.parse / n, with_bytes.parse / n)) or ""));
print(("%s: %s dialect, %d messages a turn: the largest write to readtrack %d bytes"):format(source, dialect, window, largest));

if line_profile then
	local text, module_lines = {}, {};
	local file = assert(io.open(module_path));
	for line in file:lines() do text[#text + 1] = line; end
	file:close();
	local total = 0;
	for at, count in pairs(lines) do
		local number = at:match("mod_readtrack%.lua:(%d+)$");
		if number then
			module_lines[#module_lines + 1] = { tonumber(number), count };
			total = total + count;
		end
	end
	table.sort(module_lines, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]); end);
	-- The rest of what the module adds runs in Prosody's code that it calls or that wraps it.
	print(("the module's own lines: %.0f %s per chat message; the %d busiest:"):format(total / n,
		alloc_profile and "bytes allocated" or "instructions", line_profile));
	for i = 1, math.min(line_profile, #module_lines) do
		local number, count = module_lines[i][1], module_lines[i][2];
		print(("%7.1f  %5d  %s"):format(count / n, number, (text[number] or ""):gsub("^%s+", "")));
	end
end
