-- Test only (tests/replay_pacing.rs): the largest send buffer each c2s connection reached, as
-- log lines "sendbuf-probe JID peak BYTES", one each time the peak grows by 16 KiB or more.
-- The buffer only grows by writes, so measuring at each write sees every peak.

local epoll = require "net.server".get_backend() == "epoll";
local step = 16 * 1024;

local function buffered(conn)
	local buffer = conn.writebuffer;
	if buffer == nil then return 0; end
	if type(buffer) == "string" then return #buffer; end
	local mt = getmetatable(buffer);
	if mt and mt.__len then return #buffer; end -- 13: util.dbuffer
	local bytes = 0;
	for _, piece in ipairs(buffer) do bytes = bytes + #piece; end -- 0.12: a list of strings
	return bytes;
end

-- mod_c2s keeps the connection's write function from the start, so the probe is a bytes/out
-- filter, the last step before that write: the buffer as it is plus what is about to join it.
local filters = require "util.filters";

module:hook("resource-bind", function(event)
	local session = event.session;
	if not (epoll and session.conn) then
		module:log("error", "sendbuf-probe cannot see %s's send buffer", tostring(session.full_jid));
		return;
	end
	local peak, logged = 0, 0;
	filters.add_filter(session, "bytes/out", function(data)
		local conn = session.conn;
		local now = (conn and buffered(conn) or 0) + #tostring(data);
		if now > peak then
			peak = now;
			if peak >= logged + step then
				logged = peak;
				module:log("info", "sendbuf-probe %s peak %d", session.full_jid, peak);
			end
		end
		return data;
	end, -1000);
end);
