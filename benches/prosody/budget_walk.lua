-- CPU time of mod_readtrack's budget walk (`escaped_bound`, the bound of a stanza's serialised
-- size and its depth that decides whether a message is tracked) on the load bench's chat message
-- and its receipt, as Prosody's c2s parser makes them. The function is cut out of the module's
-- file as it stands (from `local function escaped_bound` to the first `end` at the start of a
-- line) and loaded alone, so a before/after compares the module's own code:
--
--   lua5.4 benches/prosody/budget_walk.lua /usr/lib/prosody [N]
--   READTRACK_MODULE=old/mod_readtrack.lua lua5.4 benches/prosody/budget_walk.lua /usr/lib/prosody
--
-- Prints the least time over five rounds of N (1,000,000) walks of both stanzas, per chat message.

local source, n = arg[1], tonumber(arg[2] or 1000000);
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".";
local module_path = os.getenv("READTRACK_MODULE") or here .. "/../../contrib/prosody/mod_readtrack.lua";
local load_stub = dofile(here .. "/stub_prosody.lua");
local stub = load_stub(source, nil); -- Prosody's libraries, for its parser

local file = assert(io.open(module_path));
local text = file:read("a");
file:close();
local body = text:match("\n(local function escaped_bound%(.-\nend)\n");
assert(body, "no escaped_bound in " .. module_path);
local escaped_bound = assert(load(body .. "\nreturn escaped_bound;", "=escaped_bound", "t",
	setmetatable({}, { __index = _G })))();

local message, receipt = table.unpack(stub.parse({
	"<message id='p1m1' type='chat' to='bob@localhost/load'><request xmlns='urn:xmpp:receipts'/><body>load message 1</body></message>",
	"<message id='rc-p1m1' to='alice@localhost/load'><received xmlns='urn:xmpp:receipts' id='p1m1'/></message>",
}));
message.attr.from, receipt.attr.from = "alice@localhost/load", "bob@localhost/load";
assert(escaped_bound(message, 20) >= #tostring(message) and escaped_bound(receipt, 20) >= #tostring(receipt));

local least = math.huge;
for _ = 1, 5 do
	local started = os.clock();
	for _ = 1, n do
		escaped_bound(message, 20);
		escaped_bound(receipt, 20);
	end
	least = math.min(least, (os.clock() - started) / n * 1e9);
end
print(("%s: the budget walk takes %.0f ns per chat message (the message and its receipt), least of 5 rounds of %d"):format(
	module_path:match("[^/]*/[^/]*$"), least, n));
