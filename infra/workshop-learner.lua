-- mistral-lab workshop: what one learner's request may ask, checked by nginx (access_by_lua_file) after the
-- network and the key, before the request reaches the model server. The rate limit counts requests; this caps
-- what one request may cost: max_tokens at most $learner_max_tokens (set when absent), and n = 1.
-- The body is edited as text, not re-encoded: lua-cjson would turn an empty array (tools: []) into an object.
local cjson = require "cjson.safe"

local cap = tonumber(ngx.var.learner_max_tokens)

local function refuse(message)
    ngx.status = 400
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode({error = {message = message, type = "invalid_request_error", code = 400}}))
    return ngx.exit(400)
end

if ngx.req.get_method() ~= "POST" then
    return
end
ngx.req.read_body()
local body = ngx.req.get_body_data()
if not body then  -- a large body (images) is buffered to a file
    local path = ngx.req.get_body_file()
    local f = path and io.open(path, "rb")
    if f then
        body = f:read("*a")
        f:close()
    end
end
local req = body and cjson.decode(body)
if type(req) ~= "table" then
    return  -- not a JSON object: the server says what is wrong with it
end
if req.n ~= nil and req.n ~= 1 then
    return refuse("n must be 1 with a workshop key: ask again for another reply")
end
local changed = false
for _, field in ipairs({"max_tokens", "max_completion_tokens"}) do
    local v = req[field]
    if v ~= nil and v ~= cjson.null then
        if type(v) ~= "number" then
            return refuse(field .. " must be a number")
        end
        if v > cap then
            body = body:gsub('("' .. field .. '"%s*:%s*)[-%d.eE+]+', "%1" .. cap, 1)
            changed = true
        end
    end
end
if (req.max_tokens == nil or req.max_tokens == cjson.null)
        and (req.max_completion_tokens == nil or req.max_completion_tokens == cjson.null) then
    if next(req) == nil then
        body = '{"max_tokens":' .. cap .. '}'
    else
        body = body:gsub("^%s*{", '{"max_tokens":' .. cap .. ",", 1)
    end
    changed = true
end
if changed then
    ngx.req.set_body_data(body)
end
