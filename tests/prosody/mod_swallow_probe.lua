-- Test only (tests/prosody_module.rs): a stanzas/out filter that runs after mod_readtrack's last
-- one (the same priority, added later) and swallows a message whose body is "swallow me", writing
-- another message to the session in its place: mod_readtrack, which noted the swallowed message,
-- must not take the other's bytes for it.

local filters = require "util.filters";
local st = require "util.stanza";

local function swallow(stanza, session)
	if stanza.name == "message" and stanza:get_child_text("body") == "swallow me" then
		session.send(st.message({ id = "decoy", type = "chat", from = stanza.attr.from, to = stanza.attr.to })
			:text_tag("body", "in its place"));
		return nil;
	end
	return stanza;
end

-- After mod_readtrack's resource-bind handler (priority 0): its filters are in place first.
module:hook("resource-bind", function(event)
	filters.add_filter(event.session, "stanzas/out", swallow, -math.huge);
end, -10);

function module.unload()
	for _, user in pairs(prosody.hosts[module.host].sessions or {}) do
		for _, session in pairs(user.sessions or {}) do
			filters.remove_filter(session, "stanzas/out", swallow);
		end
	end
end
