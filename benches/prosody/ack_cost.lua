-- Lua instructions Prosody spends on N seed server acks (10013), then N delay bounces (501),
-- received from readtrack: its stream parser building the command's tree (util.xmppstream, as
-- on the component stream), then what mod_readtrack does with it: for the whole <send>, take the
-- inner message and serialise it; for the compact <ack> or <bounce>, fill the template. Commands
-- are packed 256 to a message, as readtrack sends them. Writing to the session costs the same in
-- both and is left out.
--
--   lua5.4 benches/prosody/ack_cost.lua /usr/lib/prosody [N]
--   lua5.4 benches/prosody/ack_cost.lua target/prosody13/usr/lib/prosody [N]

local source, n = arg[1], tonumber(arg[2] or 4000);
-- 0.12 names its modules util.*, 13 prosody.util.* (from the folder above the sources).
package.path = source .. "/?.lua;" .. source .. "/../?.lua;" .. package.path;
package.cpath = source .. "/?.so;" .. source .. "/../?.so;" .. package.cpath;
local st = require "util.stanza";
local xml_escape = st.xml_escape;
local xmppstream = require "util.xmppstream";

local hook_ns = "urn:readtrack:hook:0";
local per_message = 256;

local function instructions(command_xml, handle)
	local handled = 0;
	local cb = { stream_ns = "http://etherx.jabber.org/streams", stream_tag = "stream",
		default_ns = "jabber:component:accept" };
	function cb.streamopened(session) session.notopen = nil; end
	function cb.handlestanza(_, stanza)
		for each in stanza:childtags(nil, hook_ns) do
			handle(each);
			handled = handled + 1;
		end
	end
	local stream = xmppstream.new({ notopen = true }, cb);
	stream:feed("<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'>");
	local messages, batch = {}, {};
	for i = 1, n do
		batch[#batch + 1] = command_xml(i);
		if #batch == per_message or i == n then
			messages[#messages + 1] = "<message from='readtrack.localhost' to='localhost'>"
				.. table.concat(batch) .. "</message>";
			batch = {};
		end
	end
	local count = 0;
	debug.sethook(function() count = count + 1; end, "", 1);
	for _, message in ipairs(messages) do stream:feed(message); end
	debug.sethook();
	assert(handled == n, "handled " .. handled .. " of " .. n);
	return count;
end

local written;
local whole = instructions(function(i)
	return ("<send xmlns='%s'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m-%d' type='crs' from='localhost' to='alice@localhost/Spark 2.6.3'><body>{&quot;time&quot;:&quot;2013-11-20T06:42:23.761Z&quot;,&quot;msgType&quot;:&quot;10013&quot;}</body></message></forwarded></send>"):format(hook_ns, i);
end, function(command)
	local inner = command:get_child("forwarded", "urn:xmpp:forward:0"):get_child("message", "jabber:client");
	inner.attr.xmlns = nil;
	written = tostring(inner);
end);
local compact = instructions(function(i)
	return ("<ack xmlns='%s' to='alice@localhost/Spark 2.6.3' message-id='m-%d' time='2013-11-20T06:42:23.761Z'/>"):format(hook_ns, i);
end, function(command)
	local a = command.attr;
	assert(a.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*Z$"));
	written = "<message id='" .. xml_escape(a["message-id"]) .. "' type='crs' from='" .. xml_escape("localhost")
		.. "' to='" .. xml_escape(a.to) .. "'><body>"
		.. xml_escape('{"time":"' .. a.time .. '","msgType":"10013"}') .. "</body></message>";
end);
assert(written:find("10013", 1, true));
print(("%s: %d acks: whole <send> %d Lua instructions (%.0f each), compact <ack> %d (%.0f each): %.1f× fewer"):format(
	source, n, whole, whole / n, compact, compact / n, whole / compact));

-- The bounce of a seed chat message (its JSON body back, <delay current>501</delay>), each with
-- the id readtrack confirms with <done>.
local body = '{&quot;time&quot;:&quot;2013-11-20T06:41:36.102Z&quot;,&quot;cnt&quot;:&quot;hello&quot;,&quot;msgTypec&quot;:&quot;10000&quot;,&quot;mtype&quot;:&quot;0&quot;}';
local whole_bounce = instructions(function(i)
	return ("<send xmlns='%s' id='bounce-1-%d'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' id='m-%d' type='error' from='localhost' to='alice@localhost/Spark 2.6.3'><body>%s</body><delay xmlns='urn:xmpp:delay' current='2013-11-20T07:05:44.445Z'>501</delay></message></forwarded></send>"):format(hook_ns, i, i, body);
end, function(command)
	local inner = command:get_child("forwarded", "urn:xmpp:forward:0"):get_child("message", "jabber:client");
	inner.attr.xmlns = nil;
	for _, child in ipairs(inner.tags) do
		if child.attr.xmlns == "jabber:client" then child.attr.xmlns = nil; end
	end
	written = tostring(inner);
end);
local compact_bounce = instructions(function(i)
	return ("<bounce xmlns='%s' to='alice@localhost/Spark 2.6.3' message-id='m-%d' time='2013-11-20T07:05:44.445Z' id='bounce-1-%d' body='%s'/>"):format(hook_ns, i, i, body);
end, function(command)
	local a = command.attr;
	assert(a.time:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*Z$"));
	local text = a.body;
	written = table.concat({ "<message id='", xml_escape(a["message-id"]), "' type='error' from='", xml_escape("localhost"),
		"' to='", xml_escape(a.to), "'>", text and "<body>" .. xml_escape(text) .. "</body>" or "",
		"<delay xmlns='urn:xmpp:delay' current='", a.time, "'>501</delay></message>" });
end);
assert(written:find(">501</delay>", 1, true));
print(("%s: %d bounces: whole <send> %d Lua instructions (%.0f each), compact <bounce> %d (%.0f each): %.1f× fewer"):format(
	source, n, whole_bounce, whole_bounce / n, compact_bounce, compact_bounce / n, whole_bounce / compact_bounce));
