-- Lua instructions Prosody spends on N seed server acks (10013), then N delay bounces (501),
-- received from readtrack: its stream parser building the command's tree (util.xmppstream, as
-- on the component stream), then what contrib/prosody/mod_readtrack.lua itself does with it (its
-- message/host handler, loaded under stub_prosody.lua): for the whole <send>, take the inner
-- message and have the session serialise it; for the compact <ack> or <bounce>, fill the template.
-- Commands are packed 256 to a message, as readtrack sends them, each to one of 8 senders.
-- sessionmanager's send (filters, serialisation) is counted; the socket write and its timer are
-- not (Prosody's, the same per write; the compact forms write one string per session and command
-- message, the whole <send> one per command).
--
--   lua5.4 benches/prosody/ack_cost.lua /usr/lib/prosody [N]
--   lua5.4 benches/prosody/ack_cost.lua target/prosody13/usr/lib/prosody [N]

local source, n = arg[1], tonumber(arg[2] or 4000);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local load_stub = dofile(here .. "/stub_prosody.lua");
-- READTRACK_MODULE: another copy of the module (an older commit's, for a before/after).
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";

local hook_ns = "urn:readtrack:hook:0";
local per_message, senders = 256, 8;

local function instructions(command_xml, check)
	local stub = load_stub(source, module_path);
	local xmppstream = require "util.xmppstream";
	local sessions = {};
	for i = 1, senders do sessions[i] = stub.session(("alice%d@localhost/Spark 2.6.3"):format(i)); end
	local handled = 0;
	local cb = { stream_ns = "http://etherx.jabber.org/streams", stream_tag = "stream",
		default_ns = "jabber:component:accept" };
	function cb.streamopened(session) session.notopen = nil; end
	function cb.handlestanza(_, stanza)
		stub.command(stanza);
		stub.turn();
		handled = handled + 1;
	end
	local stream = xmppstream.new({ notopen = true }, cb);
	stream:feed("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>");
	stream:feed("<message from='readtrack.localhost' to='localhost'><accepts xmlns='" .. hook_ns
		.. "' events='signal done-list'/></message>");
	local messages, batch = {}, {};
	for i = 1, n do
		batch[#batch + 1] = command_xml(i, sessions[i % senders + 1].full_jid);
		if #batch == per_message or i == n then
			messages[#messages + 1] = "<message from='readtrack.localhost' to='localhost'>"
				.. table.concat(batch) .. "</message>";
			batch = {};
		end
	end
	local count = stub.count(function()
		for _, message in ipairs(messages) do stream:feed(message); end
	end);
	assert(handled == #messages + 1, "handled " .. handled .. " of " .. #messages + 1);
	local writes = 0;
	for i = 1, senders do
		check(sessions[i].written);
		writes = writes + sessions[i].writes;
	end
	return count, writes, #messages;
end

local function is_ack(written) assert(written:find("10013", 1, true), written); end
local whole, whole_writes = instructions(function(i, to)
	return ("<send xmlns='%s'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m-%d' type='crs' from='localhost' to='%s'><body>{&quot;time&quot;:&quot;2013-11-20T06:42:23.761Z&quot;,&quot;msgType&quot;:&quot;10013&quot;}</body></message></forwarded></send>"):format(hook_ns, i, to);
end, is_ack);
local compact, compact_writes, command_messages = instructions(function(i, to)
	return ("<ack xmlns='%s' to='%s' message-id='m-%d' time='2013-11-20T06:42:23.761Z'/>"):format(hook_ns, to, i);
end, is_ack);
print(("%s: %d acks: whole <send> %d Lua instructions (%.0f each), compact <ack> %d (%.0f each): %.1f× fewer"):format(
	source, n, whole, whole / n, compact, compact / n, whole / compact));
print(("%s: %d acks: whole <send> %d writes, compact <ack> %d (one per sender and command message)"):format(
	source, n, whole_writes, compact_writes));
-- The compact forms are written once per session and command message (mod_readtrack's
-- write_bytes), whatever the number of acks: fewer writes is most of what they save Prosody.
assert(whole_writes == n, "the whole <send>: one write per ack");
assert(compact_writes == math.min(n, senders * command_messages), "compact acks: one write per sender and command message");

-- The bounce of a seed chat message (its JSON body back, <delay current>501</delay>), each with
-- the id readtrack confirms with <done>.
local body = '{&quot;time&quot;:&quot;2013-11-20T06:41:36.102Z&quot;,&quot;cnt&quot;:&quot;hello&quot;,&quot;msgTypec&quot;:&quot;10000&quot;,&quot;mtype&quot;:&quot;0&quot;}';
local function is_bounce(written) assert(written:find(">501</delay>", 1, true), written); end
local whole_bounce = instructions(function(i, to)
	return ("<send xmlns='%s' id='bounce-1-%d'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m-%d' type='error' from='localhost' to='%s'><body>%s</body><delay xmlns='urn:xmpp:delay' current='2013-11-20T07:05:44.445Z'>501</delay></message></forwarded></send>"):format(hook_ns, i, i, to, body);
end, is_bounce);
local compact_bounce = instructions(function(i, to)
	return ("<bounce xmlns='%s' to='%s' message-id='m-%d' time='2013-11-20T07:05:44.445Z' id='bounce-1-%d' body='%s'/>"):format(hook_ns, to, i, i, body);
end, is_bounce);
print(("%s: %d bounces: whole <send> %d Lua instructions (%.0f each), compact <bounce> %d (%.0f each): %.1f× fewer"):format(
	source, n, whole_bounce, whole_bounce / n, compact_bounce, compact_bounce / n, whole_bounce / compact_bounce));
