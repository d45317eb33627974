-- mod_floor_probe: the least a module can make Prosody do to report every chat message to an
-- external process, for the load bench only (`LOAD_PROBE=1 cargo bench --bench load`): a lower
-- bound, run in the same bench as Prosody alone and Prosody with mod_readtrack, for what
-- readtrack's module adds (docs/performance.md, "Prosody's CPU with readtrack, C and Lua").
--
-- What it does, and nothing else:
-- - every message Prosody writes to a c2s session (the chat message to its recipient, the receipt
--   to the sender) is reported from the bytes Prosody wrote (one `bytes/out` filter per session:
--   no second serialisation), as one string appended to a queue;
-- - the queue is written to the component connection (a sink that reads and discards) once per
--   turn of Prosody's loop (a timer of no delay), one write: readtrack's module batches the same way;
-- - with `floor_probe_acks = true` (the seed dialect's run) the sender of a message with a body
--   gets the seed server ack (10013), filled into a template and written with the other acks of
--   that turn to the same session, as readtrack's module writes its compact acks. The ack is
--   written without waiting for any reply: reading and parsing readtrack's command message is
--   *not* part of this bound.
--
-- No decisions (archive rule, budget, which sessions, account tokens), no event vocabulary: the
-- message's bytes, concatenated, go out as they were written.

local filters = require "util.filters";
local t_concat = table.concat;
local xml_escape = require "util.stanza".xml_escape;

local host = module.host;
local component = module:get_option_string("floor_probe_component", "readtrack." .. host);
local acks = module:get_option_boolean("floor_probe_acks", false);

local function component_session()
	local h = prosody.hosts[component];
	local env = h and h.modules.component;
	return env and env.connected and env.session or nil;
end

local queued, flush_due = {}, false;
local ack_sessions, ack_writes = {}, {};

local function flush()
	flush_due = false;
	local session = component_session();
	if #queued > 0 and session then session.send(t_concat(queued)); end
	queued = {};
	for i = 1, #ack_sessions do
		local s = ack_sessions[i];
		s.send(t_concat(ack_writes[s]));
	end
	ack_sessions, ack_writes = {}, {};
	return nil;
end

local function due()
	if not flush_due then
		flush_due = true;
		module:add_timer(0, flush);
	end
end

local function take(data)
	if type(data) == "string" and data:sub(1, 9) == "<message " then
		queued[#queued + 1] = data;
		due();
	end
	return data;
end

module:hook("resource-bind", function(event)
	filters.add_filter(event.session, "bytes/out", take, math.huge);
end);

if acks then
	local time = os.date("!%Y-%m-%dT%H:%M:%SZ");
	local function ack(event)
		local origin, stanza = event.origin, event.stanza;
		if origin.type ~= "c2s" or not stanza:get_child("body") or not stanza.attr.id then return; end
		local list = ack_writes[origin];
		if not list then
			list = {};
			ack_writes[origin] = list;
			ack_sessions[#ack_sessions + 1] = origin;
		end
		list[#list + 1] = "<message id='" .. xml_escape(stanza.attr.id) .. "' type='crs' from='" .. host
			.. "' to='" .. xml_escape(origin.full_jid) .. "'><body>{&quot;time&quot;:&quot;" .. time
			.. "&quot;,&quot;msgType&quot;:&quot;10013&quot;}</body></message>";
		due();
	end
	module:hook("message/bare", ack, 1000);
	module:hook("message/full", ack, 1000);
end
