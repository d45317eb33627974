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
--
-- One file for Prosody 0.12 and 13; scripts/test runs the suite against both. It requires the
-- pre-13 module names (util.*, core.*), which 13 still resolves to prosody.util.* and so on.
-- readtrack's commands come from the component's own domain, as mod_component on both lines
-- demands of a component.

local st = require "util.stanza";
local xml_escape = st.xml_escape;
local t_concat = table.concat;
local t_unpack = table.unpack or unpack; -- Lua 5.1 kept it global
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
local xmlns_carbons = "urn:xmpp:carbons:2";
local xmlns_hints = "urn:xmpp:hints";

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
-- cost more than everything else the module does (see docs/performance.md). The bytes are
-- what Prosody's routing wrote: <message from=HOST to=COMPONENT> with no namespace.
local event_open = "<message from='" .. xml_escape(host) .. "' to='" .. xml_escape(component) .. "'>";

-- Bytes this module ever queued for readtrack: the one count each piece of an event adds to.
-- What was queued since a moment is this less its value then (the queue's start, the link's
-- last count below), so a piece costs one addition, not one per measure.
local queued_total = 0;

-- The events of one turn of Prosody's loop are written to the link together, at the start of the
-- next turn (a timer of no delay): each write costs Prosody the same whatever its size (the
-- connection's write, its timeout's timer, the poller), and under load one turn handles many
-- stanzas, each with its event. In order, all of them: nothing else writes events. Queued for
-- one connection of readtrack: a newer one drops what an older one was to get (as a broken
-- connection loses what it had not written; the snapshot it starts with resynchronises).
--
-- An event is queued as its pieces (the message's bytes, attribute values, constant text), and
-- the turn's pieces are joined once, when written: building each event as a string first copied
-- every event's bytes three times more, and each copy is garbage. Prosody runs its incremental
-- collector with a pause of 105%, so under load the collector is half of its CPU and what it
-- costs follows the bytes allocated, not the Lua instructions run (docs/performance.md,
-- "Prosody's CPU with readtrack, C and Lua"). The queue's table is kept and emptied.
local queued_events, queued_n, queued_for, flush_due = {}, 0, nil, false;
-- queued_total when the queue was last emptied: the bytes in queued_events are queued_total less
-- this, part of the link's backlog that the connection cannot see yet.
local queue_start = 0;
-- An emptied queue keeps its pieces in their slots (above queued_n, overwritten as the next events
-- are queued, never read: the write joins 1 to queued_n) until the queues emptied since the slots
-- were last cleared (at queued_total `cleared_total`; up to slot `kept_top`) held
-- `stale_bytes_kept` bytes together, which bounds the strings kept from the collector. Clearing
-- every slot at every write was 3% of the module's instructions per chat message
-- (benches/prosody/chat_cost.lua).
local stale_bytes_kept, cleared_total, kept_top = 64 * 1024, 0, 0;

-- Once readtrack said `batched` (<accepts>, below), the events of one write share one
-- <message from=HOST to=COMPONENT> instead of one each: the wrapping is 61 bytes of every event,
-- text joined for the write and read again by readtrack. A message stays open (batch_open) from
-- its first event until the write, or until it holds `batch_bytes` (batch_from: queued_total
-- when it opened), so it is never more than that plus one event over the event budget.
local accepts_batched = false;
local batch_bytes = module:get_option_number("readtrack_batch_bytes", 16 * 1024);
local batch_open, batch_from = false, 0;

local function clear_queue()
	if queued_n > kept_top then kept_top = queued_n; end
	if queued_total - cleared_total > stale_bytes_kept then
		for i = kept_top, 1, -1 do queued_events[i] = nil; end
		cleared_total, kept_top = queued_total, 0;
	end
	queued_n, queue_start = 0, queued_total;
	batch_open = false;
end

local put;

local function write_queue()
	if queued_n == 0 then return; end
	if batch_open then put("</message>"); end
	local session, data = queued_for, t_concat(queued_events, "", 1, queued_n);
	clear_queue();
	queued_for = nil;
	if session == component_session() then session.send(data); end
end

-- A receipt's signal held for its <routed> (emit_held_signal, below): the event it came with and
-- its stanza.
local held_signal_event, held_signal_stanza, emit_held_signal;

local function flush_events()
	if held_signal_event then emit_held_signal(); end -- (a timer is due: end_event adds none)
	flush_due = false;
	write_queue();
	return nil; -- once
end

-- A turn can last long: net.server_epoll handles every ready connection (`poll:wait(0)` until
-- none is) before it runs a timer, so while clients keep it busy the timer above waits, and
-- with it every event, ack and claim confirmation. The queue then grew until the link's backlog
-- budget, which counts it, left new messages untracked ("readtrack is N bytes behind") though
-- readtrack was reading everything. Past this many bytes the queue is written at once (0: only
-- at the end of the turn); never more than a quarter of the backlog budget (set below).
local flush_bytes = module:get_option_number("readtrack_flush_bytes", 1024 * 1024);

-- Pieces of the event being queued (between begin_event and end_event).
function put(piece)
	queued_n = queued_n + 1;
	queued_events[queued_n] = piece;
	queued_total = queued_total + #piece;
end

-- Three pieces, the middle one escaped already: ` name='` value `'`, `<session jid='` jid `'/>`.
local function put_three(before, escaped, after)
	local n = queued_n;
	queued_events[n + 1], queued_events[n + 2], queued_events[n + 3] = before, escaped, after;
	queued_n = n + 3;
	queued_total = queued_total + #before + #escaped + #after;
end

local function put_escaped(before, value, after)
	put_three(before, xml_escape(value), after);
end

-- An attribute, `prefix` being ` name='`; nothing for a nil value.
local function put_attr(prefix, value)
	if value ~= nil then put_escaped(prefix, value, "'"); end
end

-- Starts an event; false (and nothing queued) while readtrack is disconnected: events are dropped
-- then, and the snapshot on reconnect resynchronises.
local function begin_event()
	if held_signal_event then emit_held_signal(); end -- what came before this event
	local session = component_session();
	if not session then return false; end
	if queued_for ~= session then
		clear_queue();
		queued_for = session;
	end
	if not batch_open then
		put(event_open);
		batch_open, batch_from = accepts_batched and batch_bytes > 0, queued_total;
	end
	return true;
end

local function end_event()
	if not batch_open or queued_total - batch_from >= batch_bytes then
		put("</message>");
		batch_open = false;
	end
	if flush_bytes > 0 and queued_total - queue_start >= flush_bytes then
		write_queue(); -- a timer already due writes what comes after
	elseif not flush_due then
		flush_due = true;
		module:add_timer(0, flush_events);
	end
end

local function emit(event_xml)
	if not begin_event() then return; end
	put(event_xml);
	end_event();
end

------------------------------------------------------------------------------------------------
-- Budget. readtrack skips (and counts) a stanza over its framer limits (1 MiB, 32 elements
-- deep by default); a message is only worth claiming from mod_offline if its event will fit.
-- Over the budget, the message is left to Prosody's own handling (mod_offline included), as
-- when readtrack is away. The defaults leave room for the event's wrapping: <message> <routed>
-- <forwarded> add 3 levels, and the <session> list and attributes add bytes.
local max_event_bytes = module:get_option_number("readtrack_max_event_bytes", 256 * 1024);
local max_depth = module:get_option_number("readtrack_max_depth", 20);

-- Warnings a user can trigger at will: one line per minute at most for each kind, with the count
-- of the others. `warn(...)` gets the count so far and the suppressed count as its last two
-- arguments.
local function rate_limited(format)
	local state = { count = 0, logged_at = -math.huge, suppressed = 0 };
	return function(...)
		state.count = state.count + 1;
		local now = os.time();
		if now - state.logged_at < 60 then
			state.suppressed = state.suppressed + 1;
			return;
		end
		local args = { ... };
		args[#args + 1] = state.count;
		args[#args + 1] = state.suppressed;
		module:log("warn", format, t_unpack(args));
		state.logged_at, state.suppressed = now, 0;
	end
end

local warn_over_budget = rate_limited("Message to %s over readtrack's budget (%s), left to the server (%d so far, %d similar warnings suppressed)");
local function note_over_budget(stanza, why)
	warn_over_budget(tostring(stanza.attr.to), why);
end

-- An upper bound on the stanza's serialised size that needs no serialising: the bytes of its
-- text before escaping, times 6 (the longest escape, &apos;, for one byte). nil when it is deeper
-- than `depth` elements (its root is 1): the walk stops one level below that, so a hostile
-- nesting costs no more than the budget. One walk for both measures.
--
-- Bounded as Prosody's util/stanza.lua writes it (0.12 and 13): the children 1 to #stanza, and
-- an attribute in a namespace (the parser's key `namespace\1name`) written as a declaration of
-- its own, ` xmlns:nsN='namespace' nsN:name='value'`, on every attribute: the key's bytes count
-- six times, and 28 more cover the declaration's text and two numbers of up to ten digits. (With
-- the key counted once, one declaration on the wire repeated on 50 attributes made a message of
-- 30 KB an event of 1.5 MB: benches/prosody/budget_bound.lua.) A numbered loop, not ipairs,
-- whose call per child was a quarter of the walk.
local next = next;
local function escaped_bound(stanza, depth)
	if depth < 1 then return nil; end
	local bytes = 2 * #stanza.name + 5;
	for k, v in next, stanza.attr do bytes = bytes + 6 * (#k + #v) + 28; end
	for i = 1, #stanza do
		local child = stanza[i];
		local kind = type(child);
		if kind == "string" then
			bytes = bytes + 6 * #child;
		elseif kind == "table" then
			local child_bytes = escaped_bound(child, depth - 1);
			if not child_bytes then return nil; end
			bytes = bytes + child_bytes;
		else
			return nil; -- not a stanza Prosody could write either
		end
	end
	return bytes;
end

-- Prosody 13 destroys a connection whose send buffer passes 32 MiB (`max_send_buffer_size`), and
-- with it every event queued for readtrack (offline messages included). While readtrack is behind
-- (stopped, or slower than the traffic) by this many bytes, new messages are left to the server as
-- when readtrack is away, until the queue drains.
local max_link_backlog = module:get_option_number("readtrack_max_link_backlog", 8 * 1024 * 1024);
if max_link_backlog > 0 and (flush_bytes <= 0 or flush_bytes > max_link_backlog / 4) then
	flush_bytes = math.floor(max_link_backlog / 4);
end

-- Bytes a connection still has to write, counted no further than `limit` (nil: all of them);
-- nil when this module cannot see them. 0.12's epoll queues a string or a list of strings, 13's
-- a string or a util.dbuffer, which knows its length (`#`); other backends (select) keep their
-- queue out of reach.
local epoll = require "net.server".get_backend() == "epoll";
local function queued_bytes(conn, limit)
	if not (epoll and conn) then return nil; end
	local buffer = conn.writebuffer;
	if buffer == nil then return 0; end
	if type(buffer) == "string" then return #buffer; end
	if type(buffer) ~= "table" then return nil; end
	local mt = getmetatable(buffer);
	if mt and mt.__len then return #buffer; end
	local bytes = 0;
	for i = 1, #buffer do
		bytes = bytes + #buffer[i];
		if limit and bytes >= limit then break; end
	end
	return bytes;
end

-- Counting walks 0.12's list of queued strings, which under load is long: once per message it
-- was a sixth of all of Prosody's Lua with readtrack (docs/performance.md). The queue grows by
-- what is written to it, so the last count plus what this module emitted since is an upper bound
-- of the backlog, short only of the stanzas others route to the component meanwhile; it is
-- counted again once that bound reaches the limit, and at least every 50 ms.
local now = require "util.time".now;
local recount_interval = 0.05;
local counted_bytes, counted_at, counted_total = 0, -math.huge, 0;

local function link_backlog_at_least(limit)
	local t = now();
	if t - counted_at < recount_interval and counted_bytes + (queued_total - counted_total) < limit then
		return false;
	end
	local session = component_session();
	-- The connection's queue, and this turn's events not yet written to it.
	counted_bytes = (queued_bytes(session and session.conn, limit) or 0)
		+ (queued_for == session and queued_total - queue_start or 0);
	counted_at, counted_total = t, queued_total;
	return counted_bytes >= limit;
end

local function measure_budget(stanza)
	if max_link_backlog > 0 and link_backlog_at_least(max_link_backlog) then
		note_over_budget(stanza, "readtrack is " .. max_link_backlog .. " bytes behind");
		return false;
	end
	local bound = escaped_bound(stanza, max_depth);
	if not bound then
		note_over_budget(stanza, "deeper than " .. max_depth .. " elements");
		return false;
	end
	-- Most messages are far below the bound; only the others are serialised to be measured.
	if bound > max_event_bytes and #tostring(stanza) > max_event_bytes then
		note_over_budget(stanza, "over " .. max_event_bytes .. " bytes");
		return false;
	end
	return true;
end

-- What this module decided about the message of one event (loggable, below, and within the
-- budget), kept for the next hook that asks of the same event table, which Prosody passes to
-- pre-message/* and then message/*: a local client's message is decided once, not at every
-- hook. Kept here for the last event (held, so no other table can take its address), not on
-- the event: Prosody makes that table with room for four keys (origin, stanza, to_self), and
-- a fifth grows it, bytes per message that the collector pays for (docs/performance.md). An
-- event decided in between (one routed while another runs) only makes the first decided again.
local known_event, known_loggable, known_within_budget;

local function knowing(event)
	if event ~= known_event then
		known_event, known_loggable, known_within_budget = event, nil, nil;
	end
end

local function within_budget(stanza, event)
	if event == known_event and known_within_budget ~= nil then return known_within_budget; end
	local answer = measure_budget(stanza);
	if event then
		knowing(event);
		known_within_budget = answer;
	end
	return answer;
end

local function xml_attr(name, value)
	if value == nil then return ""; end
	return " " .. name .. "='" .. xml_escape(value) .. "'";
end

-- <forwarded> text for a stanza. XEP-0297 requires the inner stanza to name its namespace.
-- The text is the snapshot: later changes by Prosody (stanza-id, delay...) cannot show in it.
-- The stanza itself is left as it was.
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

-- The same from the bytes a c2s session was written, queued as pieces of the current event:
-- Prosody serialises a c2s stanza without its namespace, which the <message> gets here (its
-- children inherit it, as they did on the client's stream), with the `to` routing went by where
-- the message had none (to_self).
-- Once readtrack said `inherited-namespace` (<accepts>, below): the bytes go as they are, and the
-- <forwarded> (prefixed) declares the namespace the <message> inherits, instead of a copy of
-- every delivered message for the namespace alone.
local accepts_inherited = false;
local forwarded_message_open = "<forwarded xmlns='" .. xmlns_forward .. "'><message xmlns='" .. xmlns_client .. "'";
local forwarded_inheriting_open = "<f:forwarded xmlns:f='" .. xmlns_forward .. "' xmlns='" .. xmlns_client .. "'>";
local function put_forwarded_bytes(bytes, written_to, to)
	if accepts_inherited and written_to ~= nil then
		put(forwarded_inheriting_open);
		put(bytes);
		put("</f:forwarded>");
		return;
	end
	put(forwarded_message_open);
	if written_to == nil then put_attr(" to='", to); end
	put(bytes:sub(9));
	put("</forwarded>");
end

-- What Prosody's mod_mam would archive (its should_store rule, as of 0.12 and 13), for
-- servers that do not load mod_mam: a chat or normal message with content, a receipt or
-- marker, an invitation, a call, or a <store/> hint; never with <no-store/>. (Its rule is a
-- chain of get_child lookups, each a walk of the children.)
-- One pass over the children, deciding as that chain of get_child lookups did (a <body> or
-- <subject> in the message's own namespace or none; the first muc#user <x> with an <invite>).
local xmlns_muc_user = "http://jabber.org/protocol/muc#user";
local archived_namespaces = { [xmlns_receipts] = true, [xmlns_markers] = true,
	["urn:xmpp:jingle-message:0"] = true, ["urn:xmpp:jingle-message:1"] = true };
local function archivable(stanza)
	local own_ns, keep, muc_x_seen = stanza.attr.xmlns, false, false;
	for _, child in ipairs(stanza.tags) do
		local name, ns = child.name, child.attr.xmlns;
		if ns == xmlns_hints then
			if name == "no-store" or name == "no-permanent-store" then return false; end
			if name == "store" then keep = true; end
		end
		if not keep then
			if (name == "body" or name == "subject") and (ns == nil or ns == own_ns) then
				keep = true;
			elseif archived_namespaces[ns] or (name == "encryption" and ns == "urn:xmpp:eme:0")
				or (name == "x" and ns == "jabber:x:conference") then
				keep = true;
			elseif name == "x" and ns == xmlns_muc_user and not muc_x_seen then
				muc_x_seen = true;
				keep = child:get_child("invite") ~= nil;
			end
		end
	end
	return keep;
end

-- readtrack tracks what the server's archive keeps. With mod_mam loaded it is asked, so the
-- operator's own archiving rules apply; without it, its rule is applied here.
-- `event`: the answer is kept for the event (known_event, above).
local function loggable(stanza, origin, event)
	if event == known_event and known_loggable ~= nil then return known_loggable; end
	local t = stanza.attr.type;
	local answer;
	if not (t == nil or t == "normal" or t == "chat") then
		answer = false;
	elseif hosts[host].modules.mam then
		answer = module:fire_event("archive-should-store", { stanza = stanza, session = origin }) and true or false;
	else
		answer = archivable(stanza) and true or false;
	end
	if event then
		knowing(event);
		known_loggable = answer;
	end
	return answer;
end

-- Things a device sends that readtrack cares about: its own messages and acks of any dialect.
local function interesting_sent(stanza, origin, event)
	local t = stanza.attr.type;
	if t == "error" or t == "groupchat" or t == "headline" then return false; end
	return t == "crs" or stanza:get_child(nil, xmlns_receipts) ~= nil
		or stanza:get_child(nil, xmlns_offline) ~= nil
		or stanza:get_child("displayed", xmlns_markers) ~= nil
		or loggable(stanza, origin, event);
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
		-- Neither 0.12 nor 13 sets session.client_id by itself (SASL2's <user-agent id> is left
		-- to community modules): it is sent where some module set one.
		.. xml_attr("device-id", type(session.client_id) == "string" and session.client_id or nil)
		.. xml_attr("session-id", session_id(session))
		.. "/>";
end

------------------------------------------------------------------------------------------------
-- Accounts. Each account gets a random token, kept in this module's storage, which Prosody
-- purges with the account (in the server, or by prosodyctl in its own process, where no event
-- reaches this module). readtrack is told the token before the first event about a user on each
-- connection: another token for a name it knows means the account was deleted and created
-- again, and the old one's data goes before anything else happens.

local account_store = module:open_store("readtrack_account");
local account_tokens = {}; -- username -> token, for this process
local told = {};           -- username -> true: readtrack has it on this connection

-- `fresh`: read the token from storage even if known (at login: an account deleted and created
-- again by 0.12's prosodyctl, out of process, leaves this cache stale).
local function tell_account(username, fresh)
	if not username then return; end
	-- Told on this connection (`told` is emptied at each new one): the usual case, first.
	if told[username] and not fresh then return; end
	if not component_connected() then return; end
	if fresh then
		local data = account_store:get(username);
		if not (data and data.token == account_tokens[username]) then
			account_tokens[username], told[username] = nil, nil;
		end
	end
	if told[username] then return; end
	local token = account_tokens[username];
	if not token then
		local data = account_store:get(username);
		token = data and data.token;
		if not token then
			token = new_id() .. new_id();
			account_store:set(username, { token = token });
		end
		account_tokens[username] = token;
	end
	told[username] = true;
	emit("<account xmlns='" .. xmlns_hook .. "'" .. xml_attr("jid", username .. "@" .. host)
		.. xml_attr("token", token) .. "/>");
end

module:hook_global("user-deleted", function(event)
	if event.host ~= host then return; end
	account_tokens[event.username] = nil;
	told[event.username] = nil;
	emit("<user-deleted xmlns='" .. xmlns_hook .. "'" .. xml_attr("jid", event.username .. "@" .. host) .. "/>");
end);

module:hook("presence/initial", function(event)
	local session = event.origin;
	if session.type ~= "c2s" or not session.full_jid then return; end
	session.readtrack_state = "available";
	tell_account(session.username, true);
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

-- A message a local client sent is followed from pre-message until it is reported: one to a
-- local user by its <routed sent='true'> event (one copy of the message to readtrack, not two),
-- anything else by a <sent> event once mod_carbons has copied it. What is known of it rides on
-- the event table, which Prosody passes to pre-message/* and then message/*: handlers may
-- replace event.stanza by a copy (mod_mam does, for what clients send), so the stanza object is
-- no key. `readtrack_sent` is true for a message its <routed> reports, false for one a <sent>
-- will; `readtrack_sent_carbons` lists the sent carbons, once there is one. No table per
-- message: each is bytes the collector pays for (docs/performance.md).

-- The message being routed (message/*: its record, event and id) or sent (pre-message/*: its
-- event and id) right now: mod_carbons writes its copies while those events run, as new stanzas
-- the filter below recognises.
local routing, routing_event, routing_id;
local sending, sending_id;

-- Replays readtrack asked for (<deliver>): written like a live message, tracked the same way.
local replaying = setmetatable({}, { __mode = "k" });

-- Tracked messages written to a session, by sender and id, so a stream-management failure of
-- one of them is left to readtrack (it replays what the device has not acked) instead of also
-- going to mod_offline. Bounded: forgetting one only risks a duplicate, never a loss.
local written_cap = 10000;
local function written_key(stanza)
	return (stanza.attr.from or "") .. "\0" .. (stanza.attr.id or "");
end
-- A message without an id is not remembered. Only mod_smacks fires delivery/failure (0.12 and
-- 13), for what it queued: a session without stream management (session.smacks, set when the
-- client enables it) is not remembered for.
local function remember_written(session, stanza)
	if not (session.smacks and stanza.attr.id) then return; end
	local written = session.readtrack_written;
	if not written or written.n >= written_cap then
		written = { n = 0 };
		session.readtrack_written = written;
	end
	written[written_key(stanza)] = true;
	written.n = written.n + 1;
end

-- The id of the message inside a carbon of this direction, if the stanza is one.
local function carbon_of(stanza, direction)
	local carbon = stanza:get_child(direction, xmlns_carbons);
	local fwd = carbon and carbon:get_child("forwarded", xmlns_forward);
	local inner = fwd and fwd:get_child("message", xmlns_client);
	return inner;
end

-- Appends a session's JID to a list (of sessions or carbons) once. A short list is searched; a
-- long one (a user with many sessions) also keeps its JIDs as keys: a full JID holds a '/', so
-- they cannot meet a routing record's own fields. A set beside every list was a table per
-- message.
local list_scan = 16;
local function add_jid(list, full_jid)
	if not full_jid then return; end
	local n = #list;
	if n < list_scan then
		for i = 1, n do
			if list[i] == full_jid then return; end
		end
	else
		if list[full_jid] then return; end
		if n == list_scan then
			for i = 1, n do list[list[i]] = true; end
		end
		list[full_jid] = true;
	end
	list[n + 1] = full_jid;
end

-- High priority: see the stanza before any later filter replaces it by a copy.
local function record_write(stanza, session)
	if stanza.name ~= "message" then return stanza; end
	local record = in_flight[stanza];
	if record then
		add_jid(record, session.full_jid); -- the sessions written: the record's array part
		remember_written(session, stanza);
	elseif replaying[stanza] then
		remember_written(session, stanza);
	elseif routing or sending then
		local inner = routing and carbon_of(stanza, "received");
		if inner and inner.attr.id == routing_id then
			routing.carbons = routing.carbons or {};
			add_jid(routing.carbons, session.full_jid);
		else
			inner = sending and carbon_of(stanza, "sent");
			if inner and inner.attr.id == sending_id then
				local carbons = sending.readtrack_sent_carbons or {};
				sending.readtrack_sent_carbons = carbons;
				add_jid(carbons, session.full_jid);
			end
		end
	end
	return stanza;
end

-- The bytes of a tracked message as Prosody writes them to a session (issue 17): the event
-- forwards them instead of serialising the message again. Prosody's session.send (core/
-- sessionmanager.lua, 0.12 and 13) runs the stanzas/out filters, then at once
-- filter("bytes/out", tostring(stanza)): the last stanzas/out filter notes the stanza, the first
-- bytes/out filter takes its serialisation. Only the tracked object itself, as Prosody's c2s
-- stream has it (no namespace), counts: a filter that returns a copy (mod_websocket's, which
-- adds jabber:client) or swallows it (mod_smacks while hibernating) leaves the event to
-- serialise the message itself, once.
--
-- The stanza and session noted, until the next bytes/out of that session (or the end of the
-- routing): a send that never reaches bytes/out leaves nothing behind for another write.
local writing, writing_session;

-- Claims (below): what readtrack has not confirmed goes to offline storage when this ends.
local hand_back_claims;

local function note_written_stanza(stanza, session)
	local record = in_flight[stanza];
	if record and not record.bytes and stanza.attr.xmlns == nil then
		writing, writing_session = stanza, session;
	end
	return stanza;
end

-- Whether `data` is the serialisation of the message with this id: a filter that runs after
-- note_written_stanza (at the same priority, added later) may swallow the noted message and the
-- session then write another, whose bytes are not the message's. Prosody writes attributes as
-- name='escaped value', and a '>' inside a value escaped, so the start tag ends at the first '>'.
-- A message without an id is recognised by having none.
local APOS = string.byte("'");
local function written_message(data, id)
	local tag_end = data:find(">", 1, true);
	if not tag_end then return false; end
	-- A "'" inside a value is escaped, so the first " id='" is the id attribute, if it is in the
	-- start tag. Its value is compared where it stands (no needle string built per message).
	local at = data:find(" id='", 9, true);
	if not id then return at == nil or at > tag_end; end
	if not at or at > tag_end then return false; end
	local escaped = xml_escape(id);
	return data:find(escaped, at + 5, true) == at + 5 and data:byte(at + 5 + #escaped) == APOS;
end

local function take_written_bytes(data, session)
	if writing and writing_session == session then
		local record = in_flight[writing];
		if record and not record.bytes and type(data) == "string" and data:sub(1, 9) == "<message "
			and written_message(data, writing.attr.id) then
			record.bytes, record.bytes_to = data, writing.attr.to;
		end
		writing, writing_session = nil, nil;
	end
	return data;
end

local function watch_session(session)
	filters.add_filter(session, "stanzas/out", record_write, 1000);
	filters.add_filter(session, "stanzas/out", note_written_stanza, -math.huge);
	filters.add_filter(session, "bytes/out", take_written_bytes, math.huge);
end

module:hook("resource-bind", function(event) watch_session(event.session); end);

function module.load()
	for _, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do watch_session(session); end
	end
	module:log("info", "readtrack loaded, component %s", component);
end

function module.unload()
	flush_events(); -- a timer of an unloaded module does not run
	hand_back_claims("module unloaded"); -- this module's memory goes with it
	for _, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do
			filters.remove_filter(session, "stanzas/out", record_write);
			filters.remove_filter(session, "stanzas/out", note_written_stanza);
			filters.remove_filter(session, "bytes/out", take_written_bytes);
		end
	end
end

local function archive_id(stanza, to)
	-- A sender can forge <stanza-id by=recipient>. Without mod_mam nothing removes it, so then
	-- there is no archive id at all. With it, 0.12.3 and 13.0.1 still let the forged one through
	-- (they strip a copy they then ignore) but append their own after it: the last one is real.
	if not hosts[host].modules.mam then return nil; end
	local id;
	for sid in stanza:childtags("stanza-id", xmlns_sid) do
		if sid.attr.by == to then id = sid.attr.id; end
	end
	return id;
end

-- Bytes of one list of sessions or carbons in an event. A user can hold any number of sessions
-- (resources of up to 1023 bytes, each ' escaped to 6), and a message to them lists each: without
-- a bound one event could pass readtrack's stanza limit and be skipped, message and all. A
-- session left off is only not known to have got the message live: readtrack replays it there at
-- that device's next login (a duplicate with the same stanza id), never loses it.
local max_list_bytes = module:get_option_number("readtrack_max_list_bytes", 64 * 1024);

local warn_list_cut = rate_limited("readtrack event lists %d fewer <%s> than written (over %d bytes); they get the message again at their next login (%d so far, %d similar warnings suppressed)");
local function note_list_cut(name, left_off)
	warn_list_cut(left_off, name, max_list_bytes);
end

local tag_open = { session = "<session jid='", carbon = "<carbon jid='" };

-- Queues the list's tags as pieces of the current event. `list` may be nil or false (no carbons).
local function put_jid_tags(name, list)
	if not list then return; end
	local open, bytes = tag_open[name], 0;
	for i, full_jid in ipairs(list) do
		local escaped = xml_escape(full_jid);
		bytes = bytes + #open + #escaped + 3;
		-- The first tag always goes: an empty session list means "taken from offline storage".
		if i > 1 and bytes > max_list_bytes then
			note_list_cut(name, #list - i + 1);
			break;
		end
		put_three(open, escaped, "'/>");
	end
end

------------------------------------------------------------------------------------------------
-- Claims. A message taken from mod_offline (the hook below) exists, until readtrack has logged
-- it, only in its <routed> event: queued here, then in Prosody's send buffer, then in
-- readtrack's read buffer and batch. So the module keeps each one, numbered (the event's
-- `claim`), until readtrack confirms it (<durable from upto return>, which readtrack sends after
-- the commit that made it durable); when that connection of readtrack ends first, the
-- unconfirmed ones go to the server's offline storage, where they would have gone without
-- readtrack. A confirmation lost with the connection makes a message go to both: a duplicate,
-- never a loss.

-- Bytes of Prosody's memory the claimed messages take at most; past it, a message for an
-- offline user is left to mod_offline, as when readtrack is away.
local max_claimed_bytes = module:get_option_number("readtrack_max_claimed_bytes", 8 * 1024 * 1024);

-- Elements and attributes of a stanza (its text is counted in its bytes). Only claimed messages
-- are walked, which passed the depth check (`within_budget`).
local function stanza_shape(stanza)
	local elements, attributes = 1, 0;
	for _ in pairs(stanza.attr) do attributes = attributes + 1; end
	for _, child in ipairs(stanza.tags) do
		local e, a = stanza_shape(child);
		elements, attributes = elements + e, attributes + a;
	end
	return elements, attributes;
end

-- What a held claim takes of Lua's heap: the stanza object (a table per element, an entry per
-- attribute, the strings) and the claim's record, for a message of `bytes` as its event carried
-- it. benches/prosody/claims_memory.lua fills the budget with messages of several shapes and
-- compares the heap they hold with it: 0.4-1.0x with this estimate; counting the bytes alone,
-- a chat line held 5.7x its budget and a message of 200 empty elements 64x.
local function claim_heap(stanza, bytes)
	local elements, attributes = stanza_shape(stanza);
	return 256 + 2 * bytes + 320 * elements + 64 * attributes;
end

-- Numbers grow for the server's lifetime, across connections and reloads of this module: a
-- confirmation meant for an earlier connection (written to the next one in a race) cannot name
-- a later claim, and readtrack, which confirms from the lowest number it has not confirmed on a
-- connection, never sees one go back.
local last_claim = 0;

local function new_claims(session)
	return { session = session, held = {}, low = last_claim + 1, bytes = 0 };
end

-- A reload keeps the count (Prosody hands save()'s table to the new instance's restore()).
-- The claims of the current connection of readtrack: number -> { stanza, username, bytes }.
local claims = new_claims(nil);

-- Whether the readtrack on this connection confirms claims (it said `claims` in <accepts>):
-- nil until it says, then true or false. Claims are held until it has said; told false (an
-- older readtrack, which takes a claimed message as its own, as before), they are let go and
-- none are made.
local accepts_claims = nil;

local function give_to_offline_storage(claim)
	local stanza = claim.stanza;
	stanza.attr.to = stanza.attr.to or (claim.username .. "@" .. host);
	-- Not claimed again: it is not in flight (in_flight), and the hook below leaves it alone.
	local ok, err = pcall(module.fire_event, module, "message/offline/handle",
		{ origin = hosts[host], username = claim.username, stanza = stanza });
	if not ok then
		module:log("error", "readtrack: handing a message for %s to offline storage failed: %s",
			claim.username, tostring(err));
	end
end

-- Lets go of claims numbered first..last; to offline storage with `give` (else readtrack has
-- them). Returns how many it let go.
local function release(set, first, last, give)
	local held, count = set.held, 0;
	for n = math.max(first, set.low), math.min(last, last_claim) do
		local claim = held[n];
		if claim then
			held[n] = nil;
			count = count + 1;
			set.bytes = set.bytes - claim.bytes;
			if give then give_to_offline_storage(claim); end
		end
	end
	local low = set.low;
	while low <= last_claim and held[low] == nil do low = low + 1; end
	set.low = low;
	return count;
end

function hand_back_claims(why)
	local set = claims;
	claims = new_claims(nil);
	local count = release(set, set.low, last_claim, true);
	if count > 0 then
		module:log("info", "readtrack %s: %d message(s) it had not confirmed went to offline storage", why, count);
	end
end

-- The claims of `session` (the connection of readtrack now); an older connection's go back.
local function claims_of(session)
	if claims.session ~= session then
		hand_back_claims("was replaced by a newer connection");
		claims.session = session;
	end
	return claims;
end

-- <durable from upto [return]>: readtrack has claims from..upto; it did not log those listed in
-- `return` (numbers, ranges a-b), which go to offline storage from here.
local function durable(command, origin)
	local from, upto = tonumber(command.attr.from), tonumber(command.attr.upto);
	if not (from and upto) then
		module:log("warn", "readtrack <durable> without numbers from and upto");
		return true;
	end
	if origin ~= claims.session then return true; end -- an older connection's: handed back
	local returned = command.attr["return"];
	if returned then
		for item in returned:gmatch("%S+") do
			local first, last = item:match("^(%d+)%-(%d+)$");
			first = tonumber(first or item);
			last = tonumber(last) or first;
			if first and last then
				local count = release(claims, first, last, true);
				if count > 0 then
					module:log("warn", "readtrack did not log %d message(s) it was handed (claims %d to %d); stored offline by the server", count, first, last);
				end
			end
		end
	end
	release(claims, from, upto, false);
	return true;
end

module:hook_global("server-stopping", function()
	hand_back_claims("server stopping");
end);

-- The bytes of a claim's event, counted against readtrack_max_claimed_bytes.
local function count_claimed(claim, bytes)
	local held = claims.held[claim];
	if held then
		bytes = claim_heap(held.stanza, bytes);
		held.bytes = bytes;
		claims.bytes = claims.bytes + bytes;
	end
end

local warn_claims_full = rate_limited("readtrack holds %d bytes of offline messages it has not confirmed; one for %s is left to the server (%d so far, %d similar warnings suppressed)");

local routed_open = "<routed xmlns='" .. xmlns_hook .. "'";

-- The record of one routing: its array part lists the sessions written; `to`, the message's
-- bytes as a session was written them and the `to` they had, the carbons (a list once there is
-- one), the archive id, the claim, whether offline handling took it, and the copy of the
-- stanza registered after archiving (after_archiving). The event and the message's id are kept
-- beside it (routing_event, routing_id). Records are reused: a table per message is bytes the
-- collector pays for (docs/performance.md). Every field is false, never nil, while unset: a key
-- set to nil is given up by the collector, and setting it again would grow the table.
local free_records, free_count, max_free_records = {}, 0, 8;

local function take_record(to)
	if free_count == 0 then
		return { nil, to = to, bytes = false, bytes_to = false, carbons = false,
			archive_id = false, claim = false, offline = false, copy = false };
	end
	local record = free_records[free_count];
	free_records[free_count], free_count = nil, free_count - 1;
	record.to = to;
	return record;
end

-- Once nothing refers to the record any more (in_flight, routing): reused, unless its session
-- list keeps JIDs as keys too (add_jid), which would have to be cleared one by one.
local function give_back_record(record)
	local n = #record;
	if n >= list_scan or free_count >= max_free_records then return; end
	for i = n, 1, -1 do record[i] = nil; end
	record.to, record.bytes, record.bytes_to, record.carbons = false, false, false, false;
	record.archive_id, record.claim, record.offline, record.copy = false, false, false, false;
	free_count = free_count + 1;
	free_records[free_count] = record;
end

local report_routing;

-- A message routing does not track: a signal held for it goes now, before routing, as it did.
-- `rest(event_data)` runs the message/* handlers below the tracker (below).
local function untracked(rest, event_data)
	if held_signal_event == event_data then emit_held_signal(); end
	return rest(event_data);
end

local function track_routing(rest, event_data)
	local stanza, origin = event_data.stanza, event_data.origin;
	if not (component_connected() and loggable(stanza, origin, event_data)) then
		return untracked(rest, event_data);
	end
	if not within_budget(stanza, event_data) then return untracked(rest, event_data); end
	-- core_post_stanza clears 'to' on a message a user sends to their own bare JID.
	local to = stanza.attr.to and jid_bare(stanza.attr.to)
		or (origin.username and origin.username .. "@" .. origin.host);
	if not to then return untracked(rest, event_data); end
	local record = take_record(to);
	in_flight[stanza] = record;
	local outer, outer_event, outer_id = routing, routing_event, routing_id;
	routing, routing_event, routing_id = record, event_data, stanza.attr.id;
	local ok, ret = pcall(rest, event_data);
	routing, routing_event, routing_id = outer, outer_event, outer_id;
	in_flight[stanza] = nil;
	in_flight[event_data.stanza] = nil;
	if record.copy then in_flight[record.copy] = nil; end
	writing, writing_session = nil, nil;
	if not ok then
		give_back_record(record);
		error(ret, 0);
	end
	-- (A report that raises leaves its record to the collector.)
	report_routing(record, stanza, origin, to, event_data);
	give_back_record(record);
	return ret;
end

function report_routing(record, stanza, origin, to, event_data)
	-- Only what the server delivered or stored is reported: a message a policy module
	-- (blocking, privacy, a firewall) bounced or dropped never reached a session or offline
	-- handling, and does not exist for readtrack.
	local written = record[1] ~= nil;
	-- The signal held for this message (after_carbons) rides on its event where a session was
	-- written it; otherwise it goes alone, first, as it did.
	if held_signal_event == event_data and not (written and not record.offline) then
		emit_held_signal();
	end
	if not (written or record.offline) then
		return;
	end
	-- The account exists (the server delivered or stored the message): its token first. For
	-- an offline recipient it is read from storage again: the account may have been deleted
	-- and created again by a tool outside the server since this process cached it, and a
	-- message for the new account must not be filed under the old one (it would be deleted
	-- with it). A session's login reads it anyway; offline storage writes per message too.
	tell_account((jid_split(to)), not written);
	local sent_carbons = event_data.readtrack_sent == true and event_data.readtrack_sent_carbons;
	local sent = event_data.readtrack_sent == true and origin.type == "c2s";
	event_data.readtrack_sent, event_data.readtrack_sent_carbons = nil, nil;
	-- The message as a session got it where one did; serialised here only where none did
	-- (offline, hibernating, a copy written), from the object routing started with: handlers
	-- that change a message (mod_mam's <stanza-id>) change a copy, which is what was written.
	-- (Serialised before the event is begun: it may raise.)
	local original = not record.bytes and forwarded(stanza, to);
	-- Still held (an event queued since, such as the recipient's account token, sent it ahead
	-- of itself, as it came before): taken by this event.
	if held_signal_event == event_data then
		held_signal_event, held_signal_stanza = nil, nil;
		sent = origin.type == "c2s";
	end
	if not begin_event() then return; end
	put(routed_open);
	-- Taken from offline handling (no session got it, so the message was serialised above):
	-- the event names the claim.
	local claim = record.claim;
	if claim then
		count_claimed(claim, original and #original or 0);
		put_attr(" claim='", tostring(claim));
	end
	put_attr(" to='", to);
	put_attr(" archive-id='", record.archive_id or nil);
	if sent then put(" sent='true'"); end
	put(">");
	put_jid_tags("session", record);
	put_jid_tags("carbon", record.carbons);
	put_jid_tags("carbon", sent_carbons);
	if original then
		put(original);
	else
		put_forwarded_bytes(record.bytes, record.bytes_to, to);
	end
	put("</routed>");
	end_event();
end

-- Between mod_mam (0) and delivery by mod_message (-1): the stanza as it will be written.
local function after_archiving(event)
	if event ~= routing_event then return; end
	local record = routing;
	in_flight[event.stanza] = record;
	record.copy = event.stanza;
	record.archive_id = archive_id(event.stanza, record.to) or false;
end

module:hook("message/bare", after_archiving, -0.75);
module:hook("message/full", after_archiving, -0.75);

-- Routing is tracked from a handler above every other of message/bare and message/full, which
-- runs the handlers below it itself, as util/events runs them (in order of priority, until one
-- answers): that is how the module sees routing end, which neither 0.12 nor 13 fires an event
-- for (mod_message answers at -1). module:wrap_event did the same, but util/events makes a
-- closure, with the locals it captures, for each fire of a wrapped event: 192 bytes, a third of
-- what the module allocated per routed message, each byte costing Prosody's collector in
-- proportion (benches/prosody/wrapper_cost.lua). Where no handler below answers, the tracker
-- answers false, which ends the event as that nil would have (core_post_stanza reads both as
-- unhandled): a nil would make util/events run those handlers a second time. (Prosody's event
-- debug hook, set from its admin shell, does not see the handlers the tracker runs.)
do
	local tracker_priority, host_events = 1e9, hosts[host].events;
	for _, kind in ipairs({ "bare", "full" }) do
		local event_name, tracker = "message/" .. kind, nil;
		local function rest(event_data)
			local handlers = host_events.get_handlers(event_name);
			local at = 1;
			while handlers[at] ~= tracker do
				-- Not among them (it runs as one of them): routing goes on without it.
				if handlers[at] == nil then return nil; end
				at = at + 1;
			end
			for i = at + 1, #handlers do
				local ret = handlers[i](event_data);
				if ret ~= nil then return ret; end
			end
			return false;
		end
		tracker = function(event_data) return track_routing(rest, event_data); end
		module:hook(event_name, tracker, tracker_priority);
	end
end

-- mod_offline would hand the message to whichever device logs in first; readtrack replays it to
-- every device instead. Only messages being tracked above are claimed, and only once offline
-- handling is reached: that is when the server has accepted the message for storage.
module:hook("message/offline/handle", function(event)
	local record = in_flight[event.stanza];
	if not record then return; end
	if accepts_claims ~= false then
		local session = component_session();
		if not session then return; end
		local set = claims_of(session);
		if set.bytes >= max_claimed_bytes then
			warn_claims_full(set.bytes, tostring(event.username));
			return; -- and no event: mod_offline has it
		end
		last_claim = last_claim + 1;
		set.held[last_claim] = { stanza = event.stanza, username = event.username, bytes = 0 };
		record.claim = last_claim;
	end
	record.offline = true;
	return true;
end, 100);

-- A tracked message stream management could not deliver: readtrack replays it at the device's
-- next login (the device never acked it), so it is not also stored by mod_offline.
module:hook("delivery/failure", function(event)
	local session, stanza = event.session, event.stanza;
	local written = session.readtrack_written;
	if stanza.name == "message" and written and written[written_key(stanza)]
		and component_connected() then
		return true;
	end
end, 10);

------------------------------------------------------------------------------------------------
-- What local clients send.

-- A message to a user of this host that readtrack tracks is reported by its <routed> event
-- alone (sent='true'). Anything that also acknowledges something (a receipt, an offline ack, a
-- displayed marker), or goes elsewhere, gets <sent>. A receipt *request* acknowledges nothing:
-- a message asking for one (most clients' chat messages) is reported by <routed> alone; taking
-- any element of the receipts namespace for a receipt sent each such message whole a second
-- time, as <sent> (docs/performance.md).
local function reported_by_routed(stanza, origin, event)
	if not loggable(stanza, origin, event) or stanza:get_child("received", xmlns_receipts)
		or stanza:get_child(nil, xmlns_offline) or stanza:get_child("displayed", xmlns_markers) then
		return false;
	end
	local to = stanza.attr.to;
	if not to then return true; end -- to the sender's own account
	local node, to_host = jid_split(to);
	return node ~= nil and to_host == host;
end

-- readtrack tells, once per connection (<accepts events='signal'/>), which event forms it reads
-- beyond the first vocabulary; until then (an older readtrack says nothing) every receipt goes
-- whole, as <sent>.
local accepts_signal = false;
-- The same for `done-list`: the <done> of one command message's ids as one event.
local accepts_done_list = false;
-- The same for `routed-signal`: a receipt or marker written to a session of its addressee comes
-- as its <routed sent='true'> alone (held_signal_event, below), not also as a <signal>.
local accepts_routed_signal = false;

-- A receipt or chat marker with nothing else in it (readtrack's "signal": it is never logged)
-- in the compact form: the values readtrack reads of it, as attributes, instead of the whole
-- stanza serialised again. Queued (or dropped while readtrack is away) and true; false where
-- the stanza holds anything else, or something this reads differently from readtrack's parser:
-- the stanza then goes whole.
local signal_open = "<signal xmlns='" .. xmlns_hook .. "'";
-- What readtrack reads of a receipt or marker with nothing else in it: its receipt kind, the
-- receipt's id, the seed status and the displayed marker's id; nil where the stanza holds
-- anything else, or something this reads differently from readtrack's parser (it then goes
-- whole).
local function signal_values(stanza)
	local attr = stanza.attr;
	if not attr.from then return nil; end
	local receipt, receipt_id, status, displayed, offline, marker;
	for _, child in ipairs(stanza.tags) do
		local ns, name = child.attr.xmlns, child.name;
		if ns == xmlns_receipts and name == "received" then
			if receipt == nil then
				if #child.tags > 0 then return nil; end
				if child.attr.id then
					receipt, receipt_id = "xep0184", child.attr.id;
				else
					local text = (child:get_text() or ""):match("^%s*(.-)%s*$");
					receipt, status = "seed", text ~= "" and text or child.attr.type;
				end
			end
		elseif ns == xmlns_offline and name == "offline" then
			if child.attr.current then return nil; end -- a time readtrack would check
			offline = true;
		elseif ns == xmlns_markers then
			if name == "displayed" and displayed == nil then
				displayed = child.attr.id;
				if not displayed then return nil; end
			end
			marker = marker or name ~= "markable";
		elseif ns == xmlns_sid then
			if name == "stanza-id" and not (child.attr.id and child.attr.by) then return nil; end
		elseif not (ns == xmlns_receipts and name == "request") then
			return nil; -- content, or something else readtrack reads
		end
	end
	if attr.type == "crs" and offline and not receipt then receipt = "seed-offline"; end
	if (receipt == "seed" or receipt == "seed-offline") and not attr.id then return nil; end
	if not (receipt or displayed) then return nil; end
	-- Logged by nobody either way: an ack to the server, or a signal (a <received> or a marker
	-- other than <markable/>, with no content).
	if not (attr.to == host or attr.type == "crs" or receipt == "xep0184" or receipt == "seed" or marker) then
		return nil;
	end
	return receipt or false, receipt_id, status, displayed;
end

local function emit_signal(stanza, to)
	if not accepts_signal then return false; end
	local receipt, receipt_id, status, displayed = signal_values(stanza);
	if receipt == nil then return false; end
	if not begin_event() then return true; end
	local attr = stanza.attr;
	put(signal_open);
	put_attr(" from='", attr.from);
	put_attr(" to='", attr.to or to);
	put_attr(" id='", attr.id);
	put_attr(" type='", attr.type);
	put_attr(" receipt='", receipt or nil);
	put_attr(" receipt-id='", receipt_id);
	put_attr(" status='", status ~= "" and status or nil);
	put_attr(" displayed='", displayed);
	put("/>");
	end_event();
	return true;
end

-- A signal folded into its <routed> (once readtrack said `routed-signal`): a receipt or marker
-- to another local user, which the server routes to that user's sessions, was reported twice,
-- as <signal> at send time and by the <routed> that logs it for the recipient's devices. Now it
-- is held here, from after_carbons to its routing, which follows in the same call
-- (core_post_stanza fires pre-message/* and then message/*): written to a session, its <routed>
-- says sent='true' and readtrack applies the signal from the routed message itself, before
-- logging it, as it applied the separate <signal> first. Not written to any session (offline,
-- blocked, dropped, untracked, never routed here), the <signal> goes as before, ahead of any
-- later event: begin_event and the end of the turn emit a held signal first.
function emit_held_signal()
	local stanza = held_signal_stanza;
	held_signal_event, held_signal_stanza = nil, nil;
	emit_signal(stanza);
end

-- Whether a receipt or marker is one to fold into its <routed>: a signal (signal_values), from a
-- device to another user of this host (to one's own account or a session of it, the signal goes
-- as before), which routing will track (loggable and within the budget, both decided already
-- for this event) while readtrack is connected.
local function routed_here(stanza, event)
	local attr = stanza.attr;
	local node, to_host = jid_split(attr.to);
	if not (node and to_host == host and node ~= event.origin.username) then return false; end
	if not (loggable(stanza, event.origin, event) and within_budget(stanza, event)
		and component_session()) then
		return false;
	end
	return signal_values(stanza) ~= nil;
end

local function to_server(stanza)
	return stanza.attr.to == host and (stanza.attr.type == "crs"
		or stanza:get_child(nil, xmlns_receipts) or stanza:get_child(nil, xmlns_offline));
end

local function on_client_message(event)
	local origin, stanza = event.origin, event.stanza;
	if origin.type ~= "c2s" or not interesting_sent(stanza, origin, event) then return; end
	-- Over the budget, readtrack would have to skip the event: it is not sent (the message
	-- goes its way through Prosody untouched).
	if not within_budget(stanza, event) then return; end
	tell_account(origin.username);
	if to_server(stanza) then
		-- Receipts addressed to the server are meant for readtrack alone; left alone, Prosody
		-- would answer each with service-unavailable, which seed clients treat as a failed ack.
		if not emit_signal(stanza) then
			emit("<sent xmlns='" .. xmlns_hook .. "'>" .. forwarded(stanza) .. "</sent>");
		end
		return true;
	end
	event.readtrack_sent = reported_by_routed(stanza, origin, event);
	sending, sending_id = event, stanza.attr.id;
end

local sent_open = "<sent xmlns='" .. xmlns_hook .. "'>";

-- After mod_carbons (-0.5), before routing: the message passed the server's checks on what a
-- client may send (a blocked contact, say, stops it earlier) and its sent carbons are written.
local function after_carbons(event)
	local stanza = event.stanza;
	if sending == event then sending, sending_id = nil, nil; end
	if event.readtrack_sent ~= false then return; end -- untracked, or reported by <routed>
	local carbons = event.readtrack_sent_carbons;
	event.readtrack_sent, event.readtrack_sent_carbons = nil, nil;
	-- The `to` routing goes by for a message to the sender's own account (to_self).
	local to = event.to_self and jid_bare(event.origin.full_jid) or nil;
	if accepts_routed_signal and to == nil and routed_here(stanza, event) then
		if held_signal_event then emit_held_signal(); end
		held_signal_event, held_signal_stanza = event, stanza;
		event.readtrack_sent = "signal"; -- for report_routing
		if not flush_due then
			flush_due = true;
			module:add_timer(0, flush_events);
		end
		return;
	end
	if emit_signal(stanza, to) then return; end
	local xml = forwarded(stanza, to);
	if not begin_event() then return; end
	put(sent_open);
	put_jid_tags("carbon", carbons);
	put(xml);
	put("</sent>");
	end_event();
end

for _, kind in ipairs({ "bare", "full", "host" }) do
	module:hook("pre-message/" .. kind, on_client_message, 100);
	module:hook("pre-message/" .. kind, after_carbons, -0.75);
end

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

------------------------------------------------------------------------------------------------
-- Replay flow control. readtrack writes a long replay in chunks of a bounded number of bytes;
-- each chunk ends with <pace to token>, answered by <drained jid token> once the session's
-- connection has written out everything buffered so far. Only then does the next chunk come,
-- so Prosody holds about one chunk for a device however slowly it reads (13 destroys a
-- connection whose send buffer passes max_send_buffer_size, 32 MiB; 0.12's has no bound).

-- Seconds between two looks at the send buffers of paced sessions. c2s-ondrain answers at
-- once for plain c2s connections; the look also covers connections that do not fire it (a
-- websocket, a session smacks resumed on a new connection).
local pace_poll_interval = 0.1;
local paced = setmetatable({}, { __mode = "k" }); -- session -> { token, link }
local pace_polling = false;

-- Bytes the session's connection still has to write; nil when this module cannot see them
-- (another network backend, BOSH): such a session is not paced.
local function send_buffered(session)
	if not session.conn then
		-- Hibernating (smacks): what was written waits in smacks' queue for a resumption.
		return epoll and session.hibernating and math.huge or nil;
	end
	return queued_bytes(session.conn);
end

local function check_paced(session)
	local wait = paced[session];
	if not wait then return; end
	if session.destroyed then
		paced[session] = nil; -- readtrack replays the rest at the device's next login
		return;
	end
	local buffered = send_buffered(session);
	if buffered and buffered > 0 then return; end
	paced[session] = nil;
	-- A pace from an earlier connection of readtrack: its successor replays afresh.
	if wait.link ~= component_session() then return; end
	emit("<drained xmlns='" .. xmlns_hook .. "'" .. xml_attr("jid", session.full_jid)
		.. xml_attr("token", wait.token) .. "/>");
end

local function poll_paced()
	for session in pairs(paced) do check_paced(session); end
	if next(paced) == nil then
		pace_polling = false;
		return nil;
	end
	return pace_poll_interval;
end

local function pace(command)
	local to = command.attr.to;
	local session = to and jid_host(to) == host and full_sessions[to];
	if not (session and command.attr.token) then
		return true; -- gone: its device's replay goes on at its next login
	end
	paced[session] = { token = command.attr.token, link = component_session() };
	check_paced(session);
	if paced[session] and not pace_polling then
		pace_polling = true;
		module:add_timer(pace_poll_interval, poll_paced);
	end
	return true;
end

module:hook("c2s-ondrain", function(event) check_paced(event.session); end);

local execute;
-- The component session the command message being run came from (<durable> must be the one
-- holding the claims).
local command_origin;

-- Replays go through the checks a live delivery would: a user who blocked the sender (XEP-0191,
-- mod_blocklist) after the message was logged does not get it replayed. mod_blocklist keeps
-- each user's list in its store; it is read once per command stanza and user.
local blocklist_store = module:open_store("blocklist");
local blocklists;

local function blocked(username, from)
	if not (from and hosts[host].modules.blocklist) then return false; end
	local list = blocklists[username];
	if list == nil then
		list = blocklist_store:get(username) or false;
		blocklists[username] = list;
	end
	if not list then return false; end
	local node, from_host = jid_split(from);
	return list[from] or (node and list[node .. "@" .. from_host]) or list[from_host] or false;
end

-- The session a replay (<deliver> or <deliver-bytes>) to `to` goes to, or nil: gone since
-- readtrack decided (it replays when the device is next available), or the user blocked
-- `from`, the sender.
local function replay_session(to, from)
	local session = to and jid_host(to) == host and full_sessions[to];
	if not session then
		module:log("debug", "readtrack deliver to absent session %s dropped", tostring(to));
		return nil;
	end
	if blocked(session.username, from) then
		module:log("debug", "readtrack replay from %s to %s dropped: blocked", tostring(from), to);
		return nil;
	end
	return session;
end

-- Compact acks, bounces and replays (below) for one plain session within one command message are
-- written to it in one go, in order: each write costs Prosody the same whatever its size (its
-- debug line, the bytes/out filters, the connection's write and its timer), a group commit acks
-- several messages of each sender, and a replay chunk is hundreds of messages to one. Queued
-- only while a command message runs (nil otherwise); written before any other command runs (one
-- that writes to a session, or paces it, sees what came before it written) and before the <done>
-- confirmations.
local pending_writes, pending_sessions;

-- One stanza's bytes as pieces (joined once with the rest of the session's writes, not per
-- stanza first: docs/performance.md, "Prosody's CPU with readtrack, C and Lua").
local function write_bytes(session, ...)
	if not pending_writes then
		session.send(t_concat({ ... }));
		return;
	end
	local list = pending_writes[session];
	if not list then
		list = { stanzas = 0 };
		pending_writes[session] = list;
		pending_sessions[#pending_sessions + 1] = session;
	end
	local n = #list;
	for i = 1, select("#", ...) do list[n + i] = (select(i, ...)); end
	list.stanzas = list.stanzas + 1;
end

local function flush_writes()
	if not pending_writes or #pending_sessions == 0 then return; end
	local writes, sessions = pending_writes, pending_sessions;
	pending_writes, pending_sessions = {}, {};
	for i = 1, #sessions do
		local session = sessions[i];
		local list = writes[session];
		local ok, err = pcall(session.send, t_concat(list));
		if not ok then
			module:log("error", "readtrack: writing %d acks, bounces or replays to %s failed: %s", list.stanzas,
				tostring(session.full_jid), tostring(err));
		end
	end
end

local compact_command = { ack = true, bounce = true, ["deliver-bytes"] = true };

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
	blocklists = {};
	command_origin = origin;
	pending_writes, pending_sessions = {}, {};
	local done, listable = {}, true;
	for each in stanza:childtags(nil, xmlns_hook) do
		local id = each.attr.id;
		if not (id and executed[id]) then
			if not compact_command[each.name] then flush_writes(); end
			-- One failing command must not cost the rest of the batch theirs.
			local ok, err = pcall(execute, each);
			if not ok then
				module:log("error", "readtrack <%s> failed: %s", each.name, tostring(err));
			end
			if id then remember(id); end
		end
		if id then
			done[#done + 1] = id;
			listable = listable and id ~= "" and not id:find("%s");
		end
	end
	flush_writes();
	pending_writes, pending_sessions = nil, nil;
	-- Confirmed once the message's commands ran: one event for all of them where readtrack
	-- reads the list (and no id holds the list's separator), one per id otherwise.
	if accepts_done_list and listable and #done > 1 then
		emit("<done xmlns='" .. xmlns_hook .. "'" .. xml_attr("ids", t_concat(done, " ")) .. "/>");
	else
		for i = 1, #done do
			emit("<done xmlns='" .. xmlns_hook .. "'" .. xml_attr("id", done[i]) .. "/>");
		end
	end
	return true;
end, 100);

-- The seed server ack (10013), the most frequent command: readtrack sends what varies in it and
-- the stanza is filled in here, not parsed from XML. A session with stream management gets a
-- stanza object, which smacks counts and queues (its <a h> and resumption depend on it); any
-- other plain c2s session gets the bytes directly (session.send writes a string as it is, past
-- the stanzas/out filters, which have nothing to do for it). WebSocket framing and BOSH need a
-- stanza object too.
local ack_time_pattern = "^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d[%.%d]*Z$";

-- The local session a compact command (<ack>, <bounce>) is for, with the command's to, message-id
-- and time; nil (logged) when the command lacks one of them or the session is gone.
local function compact_target(command)
	local to, id, time = command.attr.to, command.attr["message-id"], command.attr.time;
	if not (to and id and time and time:match(ack_time_pattern)) then
		module:log("warn", "readtrack <%s> without to, message-id or an RFC 3339 time", command.name);
		return nil;
	end
	local node, to_host, resource = jid_split(to);
	local session = node and resource and to_host == host and full_sessions[to];
	if not session then
		module:log("debug", "readtrack %s to absent session %s dropped", command.name, to);
		return nil;
	end
	return session, to, id, time;
end

-- Whether a session must be sent a stanza object rather than bytes (see above). Client state
-- indication (mod_csi_simple) holds an inactive session's writes and lets an important stanza
-- through by its stanzas/out filter: bytes written past it would wait for the next one.
local function needs_stanza(session)
	return session.smacks or session.websocket_request or session.requests or not session.conn
		or (session.state ~= nil and session.state ~= "active");
end

-- The ack's bytes around its id, to and time (which ack_time_pattern leaves nothing to escape
-- in): what xml_escape makes of the body '{"time":"' .. time .. '","msgType":"10013"}'.
local ack_after_id = "' type='crs' from='" .. xml_escape(host) .. "' to='";
local ack_before_time = "'><body>{&quot;time&quot;:&quot;";
local ack_after_time = "&quot;,&quot;msgType&quot;:&quot;10013&quot;}</body></message>";

local function ack(command)
	local session, to, id, time = compact_target(command);
	if not session then return true; end
	if needs_stanza(session) then
		session.send(st.message({ id = id, type = "crs", from = host, to = to })
			:text_tag("body", '{"time":"' .. time .. '","msgType":"10013"}'));
	else
		write_bytes(session, "<message id='", xml_escape(id), ack_after_id, xml_escape(to), ack_before_time,
			time, ack_after_time);
	end
	return true;
end

-- The seed delay bounce (501), compact as the ack: readtrack sends the bounced message's id, its
-- body (an attribute: the parser hands it over as one string, where text would come in a piece
-- per escaped character) and the time of <delay current>; the bounce is what the whole <send>
-- gave, filled in here. Stream management and the rest as for ack().
local function bounce(command)
	local session, to, id, time = compact_target(command);
	if not session then return true; end
	local body = command.attr.body;
	if needs_stanza(session) then
		local stanza = st.message({ id = id, type = "error", from = host, to = to });
		if body then stanza:text_tag("body", body); end
		session.send(stanza:text_tag("delay", "501", { xmlns = "urn:xmpp:delay", current = time }));
	else
		write_bytes(session, "<message id='", xml_escape(id), "' type='error' from='", xml_escape(host),
			"' to='", xml_escape(to), "'>", body and "<body>" .. xml_escape(body) .. "</body>" or "",
			"<delay xmlns='urn:xmpp:delay' current='", time, "'>501</delay></message>");
	end
	return true;
end

-- A replay (or a <sent> carbon readtrack replays) in its compact form, <deliver-bytes>: the
-- message as readtrack serialised it for the client's stream (markers included, no namespace
-- on it, as Prosody writes a c2s stanza) in one attribute, which the parser hands over as one
-- string, where the whole <deliver> cost a table per element and a serialisation again for the
-- session. Beside it, what the module decides on: the sender (`from`, for the blocklist) and
-- the message's id (`message-id`: what was written, for stream management's failures). A plain
-- session gets the bytes as they are, with the other compact commands of the command message
-- to it in one write; a session that needs a stanza object (above) gets the bytes parsed, the
-- stanza the whole <deliver> gave it, which smacks counts and queues.
local parse_xml = require "util.xml".parse;

local function deliver_bytes(command)
	local attr = command.attr;
	local to, data = attr.to, attr.stanza;
	if not (to and data and data:sub(1, 9) == "<message ") then
		module:log("warn", "readtrack <deliver-bytes> without to or a <message> in stanza");
		return true;
	end
	local session = replay_session(to, attr.from);
	if not session then return true; end
	if needs_stanza(session) then
		local stanza, err = parse_xml(data);
		if not (stanza and stanza.name == "message") then
			module:log("warn", "readtrack <deliver-bytes> to %s: not a message (%s)", to, tostring(err));
			return true;
		end
		stanza = strip_client_ns(stanza);
		replaying[stanza] = true;
		session.send(stanza);
	else
		-- A plain session: nothing for stream management to remember (remember_written).
		write_bytes(session, data);
	end
	return true;
end

function execute(command)
	if command.name == "deliver-bytes" then return deliver_bytes(command); end
	if command.name == "pace" then return pace(command); end
	if command.name == "ack" then return ack(command); end
	if command.name == "bounce" then return bounce(command); end
	if command.name == "accepts" then
		local events = " " .. (command.attr.events or "") .. " ";
		accepts_signal = events:find(" signal ", 1, true) ~= nil;
		accepts_done_list = events:find(" done-list ", 1, true) ~= nil;
		accepts_routed_signal = accepts_signal and events:find(" routed-signal ", 1, true) ~= nil;
		accepts_claims = events:find(" claims ", 1, true) ~= nil;
		accepts_inherited = events:find(" inherited-namespace ", 1, true) ~= nil;
		accepts_batched = events:find(" batched ", 1, true) ~= nil;
		if not accepts_claims and command_origin == claims.session then
			release(claims, claims.low, last_claim, false); -- this readtrack keeps them itself
		end
		return true;
	end
	local inner = inner_message(command);
	if not inner then
		-- Checked here, where the commands that carry a message (most of them) do not pass.
		if command.name == "durable" then return durable(command, command_origin); end
		module:log("warn", "readtrack <%s> without <forwarded><message xmlns='jabber:client'>", command.name);
		return true;
	end
	if command.name == "deliver" then
		local session = replay_session(command.attr.to, inner.attr.from);
		if session then
			replaying[inner] = true;
			session.send(inner);
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
	elseif command.name == "store-offline" then
		-- A message readtrack could not log: it goes where it would have gone without
		-- readtrack, the server's own offline storage (not claimed by the hook above: it is not
		-- in flight).
		local node, to_host = jid_split(command.attr.to);
		if not node or to_host ~= host then
			module:log("warn", "readtrack <store-offline> for %s refused: not a user of %s", tostring(command.attr.to), host);
			return true;
		end
		inner.attr.to = inner.attr.to or command.attr.to;
		module:log("warn", "readtrack could not log a message for %s; stored offline by the server", command.attr.to);
		module:fire_event("message/offline/handle", { origin = hosts[host], username = node, stanza = inner });
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
	told = {}; -- a new connection: readtrack learns every token again
	local page, tags, bytes = 1, {}, 0;
	local function flush(last)
		-- executes: the compact commands this module runs; a readtrack older than one of them
		-- ignores the attribute (or the word) and goes on sending the whole <send> or <deliver>.
		emit("<snapshot xmlns='" .. xmlns_hook .. "' page='" .. page .. "' last='"
			.. (last and "true" or "false") .. "' executes='ack bounce deliver-bytes'>"
			.. t_concat(tags) .. "</snapshot>");
		page, tags, bytes = page + 1, {}, 0;
	end
	for username, user in pairs(hosts[host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do
			if session.presence and session.full_jid then
				tell_account(username); -- before the page that names the user
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
	accepts_signal, accepts_done_list, accepts_routed_signal = false, false, false; -- until this connection's readtrack says otherwise
	accepts_inherited, accepts_batched = false, false;
	accepts_claims = nil;
	claims_of(event.session); -- a connection it replaced leaves its claims to offline storage
	tune_connection(event.session);
	send_snapshot();
end

-- The connection ended (readtrack stopped, crashed, or the link broke): what it had not
-- confirmed goes to offline storage. Fired while mod_component still counts it connected; the
-- messages are not claimed again (not in flight).
local function on_component_disconnected(event)
	if event.session == claims.session then
		hand_back_claims("disconnected (" .. tostring(event.reason) .. ")");
	end
end

local function watch_component()
	local h = hosts[component];
	if not h then return false; end
	module:hook_object_event(h.events, "component-authenticated", on_component_authenticated);
	module:hook_object_event(h.events, "component-disconnected", on_component_disconnected);
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

-- A reload (an operator replacing this file, `module reload readtrack <host>`) runs a new copy of
-- this module beside readtrack's same connection. It carries over the last claim number (a later
-- claim must not reuse one readtrack may confirm for the old module) and what readtrack said it
-- accepts, which it says once per connection: forgotten, receipts went whole as <sent> until
-- readtrack reconnected. The old module's claims themselves went to offline storage (unload).
function module.save()
	return { readtrack_last_claim = last_claim, readtrack_link = component_session(),
		readtrack_accepts = { signal = accepts_signal, done_list = accepts_done_list, claims = accepts_claims,
			routed_signal = accepts_routed_signal, inherited = accepts_inherited, batched = accepts_batched } };
end

function module.restore(data)
	last_claim = math.max(last_claim, data.readtrack_last_claim or 0);
	if next(claims.held) == nil then claims.low = last_claim + 1; end
	local accepts = data.readtrack_accepts;
	if accepts and data.readtrack_link ~= nil and data.readtrack_link == component_session() then
		accepts_signal, accepts_done_list, accepts_claims = accepts.signal, accepts.done_list, accepts.claims;
		accepts_routed_signal = accepts.routed_signal or false;
		accepts_inherited = accepts.inherited or false;
		accepts_batched = accepts.batched or false;
	end
end
