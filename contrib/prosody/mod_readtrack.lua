-- mod_readtrack: lets the readtrack component see what a plain XEP-0114 component cannot
-- (user-to-user traffic and device lifecycle) and execute its delivery commands.
--
-- Per VirtualHost:
--   modules_enabled = { "readtrack" }
--   readtrack_component = "readtrack.example.com"
--
-- The event/command vocabulary (namespace urn:readtrack:hook:0) is documented in
-- schema/hooks.xsd. Everything here degrades to plain Prosody behaviour while the component is
-- not connected: events are then dropped (readtrack resynchronises from the <snapshot> it gets on
-- reconnect) and mod_offline stores messages as usual.

local st = require "util.stanza";
local xml_escape = st.xml_escape;
local t_concat = table.concat;
local jid_bare = require "util.jid".bare;
local jid_split = require "util.jid".split;
local jid_host = require "util.jid".host;
local filters = require "util.filters";
local user_exists = require "core.usermanager".user_exists;
local new_id = require "util.id".medium;

local xmlns_hook = "urn:readtrack:hook:0";
local xmlns_forward = "urn:xmpp:forward:0";
local xmlns_client = "jabber:client";
local xmlns_sid = "urn:xmpp:sid:0";
local xmlns_receipts = "urn:xmpp:receipts";
local xmlns_offline = "urn:xmpp:offline";
local xmlns_markers = "urn:xmpp:chat-markers:0";

local hosts, full_sessions = prosody.hosts, prosody.full_sessions;
local host = module.host;
local component = module:get_option_string("readtrack_component", "readtrack." .. host);

-- mod_component keeps its connection state (and the authenticated session) in its per-host
-- environment; reading it there (rather than mirroring it from events) stays right across a
-- reload of this module.
local function component_session()
	local h = hosts[component];
	local env = h and h.modules.component;
	return env and env.connected and env.session or nil;
end

local function component_connected()
	return component_session() ~= nil;
end

-- Events are written as text straight to the component's stream: they are addressed to it
-- alone, and routing each through Prosody (core_post_stanza, mod_component) as a stanza object
-- cost more than everything else the module does (see README "Performance"). The bytes are
-- what Prosody's routing wrote: <message from=HOST to=COMPONENT> with no namespace.
local event_open = "<message from='" .. xml_escape(host) .. "' to='" .. xml_escape(component) .. "'>";

local function emit(event_xml)
	local session = component_session();
	if not session then
		return; -- dropped while disconnected: the snapshot on reconnect resynchronises
	end
	session.send(event_open .. event_xml .. "</message>");
end

------------------------------------------------------------------------------------------------
-- Budget. readtrack skips (and counts) a stanza over its framer limits (1 MiB, 32 elements
-- deep by default); a message is only worth claiming from mod_offline if its event will fit.
-- Over the budget, the message is left to Prosody's own handling (mod_offline included), as
-- when readtrack is away. The defaults leave room for the event's wrapping: <message> <routed>
-- <forwarded> add 3 levels, and the <session> list and attributes add bytes.
local max_event_bytes = module:get_option_number("readtrack_max_event_bytes", 256 * 1024);
local max_depth = module:get_option_number("readtrack_max_depth", 20);

-- A user can trigger it at will: one line per minute at most, with the count of the others.
local over_budget = { count = 0, logged_at = -math.huge, suppressed = 0 };
local function note_over_budget(stanza, why)
	over_budget.count = over_budget.count + 1;
	local now = os.time();
	if now - over_budget.logged_at < 60 then
		over_budget.suppressed = over_budget.suppressed + 1;
		return;
	end
	module:log("warn", "Message to %s over readtrack's budget (%s), left to the server (%d so far, %d similar warnings suppressed)",
		tostring(stanza.attr.to), why, over_budget.count, over_budget.suppressed);
	over_budget.logged_at, over_budget.suppressed = now, 0;
end

-- Deeper than `limit` (the stanza's root is 1)? Stops at limit + 1, so a hostile nesting costs
-- no more than the budget.
local function deeper_than(stanza, limit)
	if limit < 1 then return true; end
	for _, child in ipairs(stanza.tags) do
		if deeper_than(child, limit - 1) then return true; end
	end
	return false;
end

-- Bytes of the stanza's text before escaping, times 6 (the longest escape, &apos;, for one
-- byte): an upper bound on its serialised size that needs no serialising.
local function escaped_bound(stanza)
	local bytes = 2 * #stanza.name + 5;
	for k, v in pairs(stanza.attr) do bytes = bytes + #k + 6 * #v + 4; end
	for _, child in ipairs(stanza) do
		if type(child) == "string" then
			bytes = bytes + 6 * #child;
		else
			bytes = bytes + escaped_bound(child);
		end
	end
	return bytes;
end

local function within_budget(stanza)
	if deeper_than(stanza, max_depth) then
		note_over_budget(stanza, "deeper than " .. max_depth .. " elements");
		return false;
	end
	-- Most messages are far below the bound; only the others are serialised to be measured.
	if escaped_bound(stanza) > max_event_bytes and #tostring(stanza) > max_event_bytes then
		note_over_budget(stanza, "over " .. max_event_bytes .. " bytes");
		return false;
	end
	return true;
end

local function xml_attr(name, value)
	if value == nil then return ""; end
	return " " .. name .. "='" .. xml_escape(value) .. "'";
end

-- <forwarded> text for a stanza. XEP-0297 requires the inner stanza to name its namespace.
-- Serialising it now is the snapshot: later changes by Prosody (to_self, stanza-id, delay...)
-- must not show, and text cannot change. The stanza itself is left as it was.
local function forwarded(stanza, to)
	local attr = stanza.attr;
	local xmlns, old_to = attr.xmlns, attr.to;
	attr.xmlns = xmlns_client;
	if to and not old_to then attr.to = to; end
	local ok, xml = pcall(tostring, stanza);
	attr.xmlns, attr.to = xmlns, old_to;
	if not ok then error(xml); end
	return "<forwarded xmlns='" .. xmlns_forward .. "'>" .. xml .. "</forwarded>";
end

-- Only what the engine logs gets a <routed> event; receipts and markers travel via <sent>.
local function loggable(stanza)
	local t = stanza.attr.type;
	return (t == nil or t == "normal" or t == "chat") and stanza:get_child("body") ~= nil;
end

-- Things a device sends that readtrack cares about: its own messages and acks of any dialect.
local function interesting_sent(stanza)
	local t = stanza.attr.type;
	if t == "error" or t == "groupchat" or t == "headline" then return false; end
	return t == "crs" or stanza:get_child("body") ~= nil
		or stanza:get_child(nil, xmlns_receipts) ~= nil
		or stanza:get_child(nil, xmlns_offline) ~= nil
		or stanza:get_child("displayed", xmlns_markers) ~= nil;
end

------------------------------------------------------------------------------------------------
-- Device lifecycle. session.readtrack_state is nil (bound, silent), "available" or "unavailable",
-- so an unavailable presence followed by the unbind that caused it yields one event.

-- The id readtrack knows this connection by. Prosody's own session.id is made from the session
-- table's address, which a later session can reuse; this one is random and kept for the
-- session's lifetime (a stream-management resumption keeps the session table, so it keeps the
-- id too). It lets readtrack tell, after a reconnect, a session that went on from a new one
-- that took the same resource while readtrack was away.
local function session_id(session)
	local id = session.readtrack_id;
	if not id then
		id = new_id();
		session.readtrack_id = id;
	end
	return id;
end

local function session_tag(name, session)
	return "<" .. name .. (name ~= "session" and " xmlns='" .. xmlns_hook .. "'" or "")
		.. xml_attr("jid", session.full_jid)
		-- Prosody 0.12 has no stable client id (SASL2 <user-agent id> arrives in 0.13).
		.. xml_attr("device-id", type(session.client_id) == "string" and session.client_id or nil)
		.. xml_attr("session-id", session_id(session))
		.. "/>";
end

module:hook("presence/initial", function(event)
	local session = event.origin;
	if session.type ~= "c2s" or not session.full_jid then return; end
	session.readtrack_state = "available";
	emit(session_tag("available", session));
end);

local function went_unavailable(session)
	if session.readtrack_state == "unavailable" then return; end
	session.readtrack_state = "unavailable";
	emit("<unavailable xmlns='" .. xmlns_hook .. "'" .. xml_attr("jid", session.full_jid)
		.. xml_attr("session-id", session_id(session)) .. "/>");
end

module:hook("pre-presence/bare", function(event)
	local session, stanza = event.origin, event.stanza;
	if stanza.attr.type == "unavailable" and not stanza.attr.to
		and session.readtrack_state == "available" then
		went_unavailable(session);
	end
end, 100);

module:hook("resource-unbind", function(event)
	went_unavailable(event.session);
end, 100);

------------------------------------------------------------------------------------------------
-- Which sessions a message was written to. While message/bare|full runs, the stanza object is
-- registered here; each c2s session's stanzas/out filter looks it up by identity. Handlers may
-- swap event.stanza for a copy (mod_mam does, to add its <stanza-id>), so the copy is registered
-- too, by a hook that runs after them. Weak keys, so a handler that errors out cannot leak.

local in_flight = setmetatable({}, { __mode = "k" });

-- Messages a local client sent to a local user: their <routed> event says sent='true' and
-- stands for the <sent> event too (one copy of the message to readtrack, not two).
local client_sent = setmetatable({}, { __mode = "k" });

-- High priority: see the stanza before any later filter replaces it by a copy.
local function record_write(stanza, session)
	local record = in_flight[stanza];
	local written = record and record.written;
	if written and session.full_jid and not written[session.full_jid] then
		written[session.full_jid] = true;
		written[#written + 1] = session.full_jid;
	end
	return stanza;
end

local function watch_session(session)
	filters.add_filter(session, "stanzas/out", record_write, 1000);
end

module:hook("resource-bind", function(event) watch_session(event.session); end);

function module.load()
	for _, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do watch_session(session); end
	end
	module:log("info", "readtrack loaded, component %s", component);
end

function module.unload()
	for _, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do
			filters.remove_filter(session, "stanzas/out", record_write);
		end
	end
end

local function archive_id(stanza, to)
	-- A sender can forge <stanza-id by=recipient>. Without mod_mam nothing removes it, so then
	-- there is no archive id at all. With it, 0.12.3 still lets the forged one through (it
	-- strips a copy it then ignores) but appends its own after it: the last one is the real one.
	if not hosts[host].modules.mam then return nil; end
	local id;
	for sid in stanza:childtags("stanza-id", xmlns_sid) do
		if sid.attr.by == to then id = sid.attr.id; end
	end
	return id;
end

local function track_routing(handlers, event_name, event_data)
	local stanza, origin = event_data.stanza, event_data.origin;
	if not (loggable(stanza) and component_connected()) then
		return handlers(event_name, event_data);
	end
	if not within_budget(stanza) then return handlers(event_name, event_data); end
	-- core_post_stanza clears 'to' on a message a user sends to their own bare JID.
	local to = stanza.attr.to and jid_bare(stanza.attr.to)
		or (origin.username and origin.username .. "@" .. origin.host);
	if not to then return handlers(event_name, event_data); end
	local original = forwarded(stanza, to);
	local record = { to = to, written = {} };
	event_data.readtrack = record;
	in_flight[stanza] = record;
	local ret = handlers(event_name, event_data);
	in_flight[stanza] = nil;
	in_flight[event_data.stanza] = nil;

	local written = record.written;
	if #written == 0 and not user_exists(jid_split(to), host) then
		return ret; -- Prosody bounced it; nothing to track
	end
	local sent = client_sent[stanza] and origin.type == "c2s" and "true" or nil;
	client_sent[stanza] = nil;
	local routed = { "<routed xmlns='", xmlns_hook, "'", xml_attr("to", to),
		xml_attr("archive-id", record.archive_id), xml_attr("sent", sent), ">" };
	for _, full_jid in ipairs(written) do
		routed[#routed + 1] = "<session" .. xml_attr("jid", full_jid) .. "/>";
	end
	routed[#routed + 1] = original;
	routed[#routed + 1] = "</routed>";
	emit(t_concat(routed));
	return ret;
end

-- Between mod_mam (0) and delivery by mod_message (-1): the stanza as it will be written.
local function after_archiving(event)
	local record = event.readtrack;
	if not record then return; end
	in_flight[event.stanza] = record;
	record.archive_id = archive_id(event.stanza, record.to);
end

module:hook("message/bare", after_archiving, -0.75);
module:hook("message/full", after_archiving, -0.75);

module:wrap_event("message/bare", track_routing);
module:wrap_event("message/full", track_routing);

-- mod_offline would hand the message to whichever device logs in first; readtrack replays it to
-- every device instead. Only messages being tracked above are claimed.
module:hook("message/offline/handle", function(event)
	if in_flight[event.stanza] then return true; end
end, 100);

------------------------------------------------------------------------------------------------
-- What local clients send.

-- A plain message with a body to a user of this host is reported by its <routed> event alone
-- (sent='true'). Anything that also acknowledges something, or goes elsewhere, gets <sent>.
local function reported_by_routed(stanza)
	if not loggable(stanza) or stanza:get_child(nil, xmlns_receipts)
		or stanza:get_child(nil, xmlns_offline) or stanza:get_child("displayed", xmlns_markers) then
		return false;
	end
	local to = stanza.attr.to;
	if not to then return true; end -- to the sender's own account
	local node, to_host = jid_split(to);
	return node ~= nil and to_host == host;
end

local function on_client_message(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "c2s" or not interesting_sent(stanza) then return; end
	if reported_by_routed(stanza) then
		client_sent[stanza] = true;
		return;
	end
	local to = event.to_self and jid_bare(origin.full_jid) or nil;
	emit("<sent xmlns='" .. xmlns_hook .. "'>" .. forwarded(stanza, to) .. "</sent>");
	-- Receipts addressed to the server are meant for readtrack alone; left alone, Prosody would
	-- answer each with service-unavailable, which seed clients treat as a failed ack.
	if stanza.attr.to == host and (stanza.attr.type == "crs"
		or stanza:get_child(nil, xmlns_receipts) or stanza:get_child(nil, xmlns_offline)) then
		return true;
	end
end

module:hook("pre-message/bare", on_client_message, 100);
module:hook("pre-message/full", on_client_message, 100);
module:hook("pre-message/host", on_client_message, 100);

------------------------------------------------------------------------------------------------
-- Commands from the component.

-- Parsed inside <forwarded>, the message and its children carry an explicit jabber:client.
-- Prosody's own stanzas leave the stream's default namespace implicit (nil), and lookups such as
-- get_child("body") only match that, so mod_offline or mod_mam would not see the body.
local function strip_client_ns(stanza)
	if stanza.attr.xmlns == xmlns_client then stanza.attr.xmlns = nil; end
	for _, child in ipairs(stanza.tags) do
		if child.attr.xmlns == xmlns_client then strip_client_ns(child); end
	end
	return stanza;
end

-- The command stanza is this handler's alone and dropped after it, so its inner message is
-- used as it is rather than copied.
local function inner_message(command)
	local fwd = command:get_child("forwarded", xmlns_forward);
	local inner = fwd and fwd:get_child("message", xmlns_client);
	return inner and strip_client_ns(inner);
end

-- Ids of commands executed lately. readtrack sends a command again when it got no <done> for it
-- (it crashed, or the connection broke, before the answer); executing each id once is what makes
-- that resend safe. A ring keeps the memory bounded.
local executed, ring, ring_at, ring_size = {}, {}, 0, 10000;
local function remember(id)
	ring_at = ring_at % ring_size + 1;
	if ring[ring_at] then executed[ring[ring_at]] = nil; end
	ring[ring_at] = id;
	executed[id] = true;
end

local execute;

module:hook("message/host", function(event)
	local origin, stanza = event.origin, event.stanza;
	local command = stanza:get_child(nil, xmlns_hook);
	if not command then return; end
	if origin.type ~= "component" or origin.host ~= component then
		module:log("warn", "Ignoring readtrack <%s> from %s (%s), not from %s",
			command.name, tostring(stanza.attr.from), tostring(origin.type), component);
		return true;
	end
	-- readtrack packs many commands into one message; they run in document order.
	for each in stanza:childtags(nil, xmlns_hook) do
		local id = each.attr.id;
		if not (id and executed[id]) then
			-- One failing command must not cost the rest of the batch theirs.
			local ok, err = pcall(execute, each);
			if not ok then
				module:log("error", "readtrack <%s> failed: %s", each.name, tostring(err));
			end
			if id then remember(id); end
		end
		if id then emit("<done xmlns='" .. xmlns_hook .. "'" .. xml_attr("id", id) .. "/>"); end
	end
	return true;
end, 100);

function execute(command)
	local inner = inner_message(command);
	if not inner then
		module:log("warn", "readtrack <%s> without <forwarded><message xmlns='jabber:client'>", command.name);
		return true;
	end
	if command.name == "deliver" then
		local to = command.attr.to;
		local session = to and jid_host(to) == host and full_sessions[to];
		if session then
			session.send(inner);
		else
			-- Gone since readtrack decided; it replays when the device is next available.
			module:log("debug", "readtrack deliver to absent session %s dropped", tostring(to));
		end
	elseif command.name == "send" then
		if inner.attr.from and inner.attr.from ~= host then
			module:log("warn", "readtrack <send> from %s refused: only %s may be used", inner.attr.from, host);
			return true;
		end
		inner.attr.from = host;
		-- Acks and bounces name the session that sent the message, and it gets them directly,
		-- as with deliver. If it has gone, Prosody's routing would hand the stanza to another
		-- device of the user or to mod_offline (which stores type crs like a chat message):
		-- neither is meant for it, so it is dropped.
		local to = inner.attr.to;
		local node, to_host, resource = jid_split(to);
		if node and resource and to_host == host then
			local session = full_sessions[to];
			if session then
				session.send(inner);
			else
				module:log("debug", "readtrack send to absent session %s dropped", to);
			end
			return true;
		end
		module:send(inner);
	else
		module:log("warn", "Unknown readtrack command <%s>", command.name);
	end
end

------------------------------------------------------------------------------------------------
-- (Re)connection: readtrack lost track of presence while away, so tell it who is online now.

-- In pages, so no stanza grows with the number of sessions: at most this many sessions or
-- about this many bytes each (one session tag is at most ~8 KiB: a 1023-byte resource of
-- characters that escape to 6 bytes), far below readtrack's stanza limit.
local snapshot_page_sessions = module:get_option_number("readtrack_snapshot_page_sessions", 100);
local snapshot_page_bytes = module:get_option_number("readtrack_snapshot_page_bytes", 32 * 1024);

local function send_snapshot()
	local page, tags, bytes = 1, {}, 0;
	local function flush(last)
		emit("<snapshot xmlns='" .. xmlns_hook .. "' page='" .. page .. "' last='"
			.. (last and "true" or "false") .. "'>" .. t_concat(tags) .. "</snapshot>");
		page, tags, bytes = page + 1, {}, 0;
	end
	for _, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do
			if session.presence and session.full_jid then
				local tag = session_tag("session", session);
				if #tags > 0 and (#tags >= snapshot_page_sessions or bytes + #tag > snapshot_page_bytes) then
					flush(false);
				end
				tags[#tags + 1] = tag;
				bytes = bytes + #tag;
			end
		end
	end
	flush(true);
end

-- Prosody's epoll backend reads a connection 8 KiB at a time, and when more is buffered it
-- reads the rest from a timer, which the loop runs after at least 1 ms. A replay of 10k
-- messages is about 7 MB of commands: read that way it took seconds of mostly idle waiting.
-- The component's connection reads what is there, up to this, in one go (0: Prosody's default).
local read_size = module:get_option_number("readtrack_read_size", 256 * 1024);

local function tune_connection(session)
	local conn = session and session.conn;
	if read_size > 0 and conn and conn.set_mode and require "net.server".get_backend() == "epoll" then
		conn:set_mode(read_size);
		module:log("debug", "readtrack component connection reads up to %d bytes at once", read_size);
	end
end

local function on_component_authenticated(event)
	tune_connection(event.session);
	send_snapshot();
end

local function watch_component()
	local h = hosts[component];
	if not h then return false; end
	module:hook_object_event(h.events, "component-authenticated", on_component_authenticated);
	-- Loaded (or reloaded) while readtrack is connected.
	tune_connection(component_session());
	return true;
end

-- Hosts activate in no fixed order: the component may not exist yet.
if not watch_component() then
	module:hook_global("host-activated", function(activated)
		if activated == component then watch_component(); end
	end);
end
