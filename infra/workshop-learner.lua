-- mistral-lab workshop: what one learner's request may ask, checked by nginx (access_by_lua_file) after the
-- network and the key, before the request reaches the model server. The rate limit counts requests; this caps
-- what one request may cost: max_tokens at most $learner_max_tokens (set when absent), and n = 1. With a token
-- budget ($learner_token_budget, 0 for none), a learner who has spent it is refused, and a reply may not ask for
-- more than is left. A streamed request gets `stream_options.include_usage` so the server reports its usage at the
-- end (usage.lua counts it, and takes that event out again when the learner had not asked for it).
-- The body is edited as text, not re-encoded: lua-cjson would turn an empty array (tools: []) into an object.
local cjson = require "cjson.safe"
local usage = require "usage"

local cap = tonumber(ngx.var.learner_max_tokens)
local budget = tonumber(ngx.var.learner_token_budget) or 0

local function answer(status, kind, message)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.say(cjson.encode({error = {message = message, type = kind, code = status}}))
    return ngx.exit(status)
end

local function refuse(message)
    return answer(400, "invalid_request_error", message)
end

if ngx.req.get_method() ~= "POST" then
    return
end
local left = usage.left(ngx.var.learner, budget)
if left and left <= 0 then
    ngx.ctx.refused = "budget"
    -- 429 with insufficient_quota, as OpenAI's API says a spent quota; no Retry-After: waiting does not help.
    return answer(429, "insufficient_quota", string.format(
        "token budget spent: %s has used %d of its %d tokens in this workshop; ask the instructor for more",
        ngx.var.learner, budget - left, budget))
end
if left and left < cap then
    cap = left
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
if req.stream == true then
    local so = req.stream_options
    local asked = type(so) == "table" and so.include_usage == true
    if not asked then
        if type(so) == "table" and so.include_usage ~= nil then
            body = body:gsub('("include_usage"%s*:%s*)[%a]+', "%1true", 1)
        elseif type(so) == "table" and next(so) ~= nil then
            body = body:gsub('("stream_options"%s*:%s*{)', '%1"include_usage":true,', 1)
        elseif type(so) == "table" then  -- {}
            body = body:gsub('("stream_options"%s*:%s*){%s*}', '%1{"include_usage":true}', 1)
        elseif so ~= nil then  -- null
            body = body:gsub('("stream_options"%s*:%s*)null', '%1{"include_usage":true}', 1)
        else
            body = body:gsub("^%s*{", '{"stream_options":{"include_usage":true},', 1)
        end
        ngx.ctx.usage_injected = true
        changed = true
    end
end
ngx.ctx.counting = true
if changed then
    ngx.req.set_body_data(body)
end
