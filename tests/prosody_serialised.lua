-- Prints routed events as mod_readtrack writes them, each followed by a NUL byte, for random messages
-- built and serialised by Prosody's own util.stanza: what readtrack must accept whatever a
-- client sent. Used by tests/replay_faithful.rs.
--
--   lua5.4 tests/prosody_serialised.lua PROSODY_SOURCE_DIR SEED COUNT

local source, seed, count = arg[1], tonumber(arg[2]), tonumber(arg[3]);
-- 0.12 names its modules util.*, 13 prosody.util.* (from the folder above the sources).
package.path = source .. "/?.lua;" .. source .. "/../?.lua;" .. package.path;
package.cpath = source .. "/?.so;" .. source .. "/../?.so;" .. package.cpath;
local st = require "util.stanza";

math.randomseed(seed);
local function pick(list) return list[math.random(#list)]; end

-- Text a client can send: markup characters, quotes, non-ASCII of every width, no controls.
local pieces = { "a", "Z", "0", " ", "<", ">", "&", "'", "\"", "é", "ß", "Ꭰ", "λόγος", "😀",
	"\u{FFFD}", "\t", "\n", "]]>", "&amp;", "--", "?>", "中文", "ｆｕｌｌ" };
local function text(max)
	local out = {};
	for i = 1, math.random(0, max) do out[i] = pick(pieces); end
	return table.concat(out);
end

local namespaces = { "eu.siacs.conversations.axolotl", "urn:xmpp:omemo:2", "jabber:x:oob",
	"urn:xmpp:chat-markers:0", "urn:xmpp:sid:0", "urn:xmpp:reactions:0", "urn:xmpp:hints",
	"urn:xmpp:eme:0", "urn:xmpp:receipts", "urn:example:" .. math.random(1000), "" };
local names = { "encrypted", "payload", "header", "key", "x", "url", "markable", "origin-id",
	"reactions", "reaction", "store", "encryption", "request", "thing", "stanza-id", "delay" };

local function element(parent, depth)
	local ns = pick(namespaces);
	local attr = { xmlns = ns ~= "" and ns or nil };
	for _ = 1, math.random(0, 3) do
		attr[pick({ "id", "sid", "rid", "by", "namespace", "xml:lang", "type", "v" })] = text(6);
	end
	parent:tag(pick(names), attr);
	for _ = 1, math.random(0, 3) do
		if depth < 5 and math.random() < 0.5 then
			element(parent, depth + 1);
		else
			parent:text(text(12));
		end
	end
	parent:up();
end

for n = 1, count do
	local attr = { xmlns = "jabber:client", from = "alice@localhost/" .. text(4) .. "r",
		to = "bob@localhost", id = text(8) .. n };
	if math.random() < 0.7 then attr.type = pick({ "chat", "normal" }); end
	if math.random() < 0.5 then attr["xml:lang"] = pick({ "en", "de", "fr-CA" }); end
	local m = st.message(attr);
	-- Every event is of a message readtrack logs: it carries a body or a store hint.
	if math.random() < 0.8 then
		m:tag("body", math.random() < 0.3 and { ["xml:lang"] = "en" } or nil):text(text(20)):up();
	else
		m:tag("store", { xmlns = "urn:xmpp:hints" }):up();
	end
	for _ = 1, math.random(0, 4) do element(m, 1); end
	local routed = "<message from='localhost' to='readtrack.localhost'>"
		.. "<routed xmlns='urn:readtrack:hook:0' to='bob@localhost'>"
		.. "<forwarded xmlns='urn:xmpp:forward:0'>" .. tostring(m) .. "</forwarded>"
		.. "</routed></message>";
	-- Events end with a NUL byte: XML cannot carry one, a line end it can.
	io.write(routed, "\0");
end
