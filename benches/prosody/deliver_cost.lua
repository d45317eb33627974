-- Lua instructions Prosody spends on N replayed messages received from readtrack: its stream
-- parser building the command's tree (util.xmppstream, as on the component stream), then what
-- contrib/prosody/mod_readtrack.lua itself does with it (its message/host handler, loaded under
-- stub_prosody.lua): for the whole <deliver>, take the inner message and have the session
-- serialise it; for the compact <deliver-bytes>, write the bytes it carries. The replays are the
-- load bench's (a chat message with its replay markers, in the xep dialect), packed as readtrack
-- packs them (64 KiB or 256 commands to a command message), all to one device.
-- sessionmanager's send (filters, serialisation) is counted; the socket write and its timer are
-- not (Prosody's, the same per write: the whole <deliver> writes once per replay, the compact
-- form once per command message).
--
--   lua5.4 benches/prosody/deliver_cost.lua /usr/lib/prosody [N]
--   lua5.4 benches/prosody/deliver_cost.lua target/prosody13/usr/lib/prosody [N]

local source, n = arg[1], tonumber(arg[2] or 4000);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local load_stub = dofile(here .. "/stub_prosody.lua");
-- READTRACK_MODULE: another copy of the module (an older commit's, for a before/after).
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";

local hook_ns = "urn:readtrack:hook:0";
local max_commands, max_bytes = 256, 64 * 1024;
local device = "sink@localhost/phone";

-- The replay readtrack writes for the device, with `open` as its start tag's beginning.
local function replay(i, open)
	return ("%s to=\"%s\" id=\"o%d\" type=\"chat\" from=\"source@localhost/sink\"><body>offline %d</body>"
		.. "<delay xmlns=\"urn:xmpp:delay\" from=\"localhost\" stamp=\"2026-12-02T08:18:00.000Z\"/>"
		.. "<stanza-id xmlns=\"urn:xmpp:sid:0\" id=\"0193a6f2-7c1a-7000-8000-%012d\" by=\"sink@localhost\"/>"
		.. "<request xmlns=\"urn:xmpp:receipts\"/></message>"):format(open, device, i, i, i);
end

-- As readtrack writes the stanza attribute: in single quotes, only what XML asks escaped.
local function attr_escape(s)
	return (s:gsub("[&<']", { ["&"] = "&amp;", ["<"] = "&lt;", ["'"] = "&apos;" }));
end

local function instructions(command_xml)
	local stub = load_stub(source, module_path);
	local xmppstream = require "util.xmppstream";
	local session = stub.session(device);
	local written = {};
	local send = session.send;
	function session.send(t)
		local ok = send(t);
		written[#written + 1] = session.written;
		return ok;
	end
	local handled = 0;
	local cb = { stream_ns = "http://etherx.jabber.org/streams", stream_tag = "stream",
		default_ns = "jabber:component:accept" };
	function cb.streamopened(s) s.notopen = nil; end
	function cb.handlestanza(_, stanza)
		stub.command(stanza);
		stub.turn();
		handled = handled + 1;
	end
	local stream = xmppstream.new({ notopen = true }, cb);
	stream:feed("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>");
	local messages, batch, bytes = {}, {}, 0;
	local function flush()
		messages[#messages + 1] = "<message from='readtrack.localhost' to='localhost'>" .. table.concat(batch) .. "</message>";
		batch, bytes = {}, 0;
	end
	for i = 1, n do
		local command = command_xml(i);
		if #batch > 0 and (#batch >= max_commands or bytes + #command > max_bytes) then flush(); end
		batch[#batch + 1], bytes = command, bytes + #command;
	end
	flush();
	local count = stub.count(function()
		for _, message in ipairs(messages) do stream:feed(message); end
	end);
	assert(handled == #messages, "handled " .. handled .. " of " .. #messages);
	local all = table.concat(written);
	local replays = select(2, all:gsub("<body>offline ", ""));
	assert(replays == n, "written " .. replays .. " replays of " .. n);
	return count, #written, #messages, all;
end

local whole, whole_writes, _, whole_written = instructions(function(i)
	return ("<deliver xmlns='%s' to='%s'><forwarded xmlns='urn:xmpp:forward:0'>%s</forwarded></deliver>")
		:format(hook_ns, device, replay(i, "<message xmlns=\"jabber:client\""));
end);
local compact, compact_writes, command_messages, compact_written = instructions(function(i)
	return ("<deliver-bytes xmlns='%s' to='%s' from='source@localhost/sink' message-id='o%d' stanza='%s'/>")
		:format(hook_ns, device, i, attr_escape(replay(i, "<message")));
end);
print(("%s: %d replays: whole <deliver> %d Lua instructions (%.0f each), compact <deliver-bytes> %d (%.0f each): %.1f× fewer"):format(
	source, n, whole, whole / n, compact, compact / n, whole / compact));
print(("%s: %d replays: whole <deliver> %d writes, compact <deliver-bytes> %d (one per command message, %d)"):format(
	source, n, whole_writes, compact_writes, command_messages));
assert(whole_writes == n, "the whole <deliver>: one write per replay");
assert(compact_writes == command_messages, "compact: one write per command message");
-- The same replays, in order (their attributes in an order of Prosody's serialiser, or as
-- readtrack wrote them: tests/prosody_module.rs compares the stanzas themselves).
for _, written in ipairs({ whole_written, compact_written }) do
	local at = 1;
	for i = 1, n do
		at = assert(written:find("<body>offline " .. i .. "</body>", at, true), "replay " .. i .. " missing");
	end
end
