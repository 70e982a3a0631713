-- mistral-lab workshop: each learner's tokens, counted from the model server's own `usage` and kept in the
-- shared dict `workshop_usage` (required as "usage" by nginx.conf and learner.lua).
--
-- body_filter reads the reply as it goes by: a JSON reply is parsed once whole; a streamed one (SSE) event by
-- event, where the server's last event carries `usage` (the access step asks for it when the learner did not, and
-- then this filter takes that event out of what the learner sees). log adds the counts to the learner's totals and
-- hands them to nginx's access log (usage.jsonl, one JSON line per request: the instructor's record).
-- A shared dict keeps its contents through a HUP reload (a revoke); after a full restart, init reads usage.jsonl
-- back, so a spent budget stays spent. https://github.com/openresty/lua-nginx-module#lua_shared_dict (read
-- 2026-12-07).
local cjson = require "cjson.safe"

local _M = {}

local DICT = "workshop_usage"
local MAX_JSON_BYTES = 8 * 1024 * 1024  -- a plain reply larger than this is not parsed (counted as unknown)
local WARN_S = 15 * 60  -- the last minutes, when every reply also carries a plain-words warning

local function dict()
    return ngx.shared[DICT]
end

-- prompt and completion tokens so far for one learner (0, 0 for one never seen)
function _M.totals(learner)
    local d = dict()
    return d:get("p:" .. learner) or 0, d:get("c:" .. learner) or 0
end

-- tokens left under the budget, or nil when the workshop sets none (budget 0)
function _M.left(learner, budget)
    if not budget or budget <= 0 then
        return nil
    end
    local p, c = _M.totals(learner)
    return budget - p - c
end

local function add(learner, prompt, completion)
    local d = dict()
    d:incr("p:" .. learner, prompt, 0)
    d:incr("c:" .. learner, completion, 0)
end

-- At start (init_by_lua, in the master): a fresh dict is filled from the log; after a HUP the dict still holds
-- its counts (and the marker), so the log is not added a second time.
function _M.init(path)
    local d = dict()
    if d:get("_loaded") then
        return
    end
    local f = io.open(path, "r")
    if f then
        for line in f:lines() do
            local row = cjson.decode(line)
            if type(row) == "table" and type(row.learner) == "string" and row.learner ~= "" then
                add(row.learner, tonumber(row.prompt) or 0, tonumber(row.completion) or 0)
            end
        end
        f:close()
    end
    d:set("_loaded", true)
end

-- The usage object of one decoded reply or event, if it has a numeric one.
local function usage_of(obj)
    local u = type(obj) == "table" and obj.usage
    if type(u) == "table" and type(u.prompt_tokens) == "number" then
        return u
    end
    return nil
end

-- One SSE event's text (without the blank line after it): note what it tells; return whether the learner sees it.
local function on_event(ctx, event)
    local data = event:match("^data: ?(.*)$")
    if not data or data == "[DONE]" then
        return true
    end
    if not data:find('"usage"', 1, true) then
        if data:find('"content"', 1, true) or data:find('"text"', 1, true) then
            ctx.chunks = (ctx.chunks or 0) + 1  -- the estimate used when the stream ends without usage
        end
        return true
    end
    local obj = cjson.decode(data)
    local u = usage_of(obj)
    if u then
        ctx.prompt, ctx.completion = u.prompt_tokens, u.completion_tokens or 0
        -- The usage-only event the access step asked for: choices is empty. Anything else stays as sent.
        if ctx.usage_injected and type(obj.choices) == "table" and next(obj.choices) == nil then
            return false
        end
    elseif type(obj) == "table" and type(obj.choices) == "table" and next(obj.choices) ~= nil then
        ctx.chunks = (ctx.chunks or 0) + 1
    end
    return true
end

local function filter_stream(ctx, chunk, eof)
    local text = (ctx.pending or "") .. (chunk or "")
    local rewrite = ctx.usage_injected  -- only then does the reply change; otherwise it passes as it came
    local out = {}
    local from = 1
    while true do
        local s, e = text:find("\r?\n\r?\n", from)
        if not s then
            break
        end
        local event = text:sub(from, s - 1)
        if on_event(ctx, event) and rewrite then
            out[#out + 1] = text:sub(from, e)
        end
        from = e + 1
    end
    local rest = text:sub(from)
    if eof then
        if rewrite then
            out[#out + 1] = rest
        end
        rest = ""
    end
    ctx.pending = rest
    if rewrite then
        -- Only whole events go out, so the one to take away can be recognised; the server writes each event in
        -- one piece, so nothing waits in practice.
        ngx.arg[1] = table.concat(out)
    end
end

local function filter_json(ctx, chunk, eof)
    if ctx.too_big then
        return
    end
    ctx.parts = ctx.parts or {}
    ctx.size = (ctx.size or 0) + #(chunk or "")
    if ctx.size > MAX_JSON_BYTES then
        ctx.too_big, ctx.parts = true, nil
        return
    end
    ctx.parts[#ctx.parts + 1] = chunk
    if eof then
        local u = usage_of(cjson.decode(table.concat(ctx.parts)))
        if u then
            ctx.prompt, ctx.completion = u.prompt_tokens, u.completion_tokens or 0
        end
        ctx.parts = nil
    end
end

-- seconds until the workshop ends (nginx.conf sets $workshop_ends_at), never below 0
local function ends_in()
    local ends = tonumber(ngx.var.workshop_ends_at)
    return ends and math.max(ends - ngx.time(), 0) or nil
end

-- header_filter: what kind of reply this is; a reply we may shorten loses its length. Every reply says when the
-- workshop ends, so a learner's program (or the chat page) can tell before the server is gone.
function _M.header_filter()
    local left = ends_in()
    if left then
        ngx.header["X-Workshop-Ends-In"] = left
        if left < WARN_S then
            ngx.header["X-Workshop-Warning"] = string.format(
                "this workshop ends in %d min: its server and keys go then", math.ceil(left / 60))
        end
    end
    local ctx = ngx.ctx
    local ctype = ngx.header["Content-Type"] or ""
    if type(ctype) == "table" then
        ctype = ctype[1] or ""
    end
    if ctype:find("text/event-stream", 1, true) then
        ctx.kind = "sse"
        if ctx.usage_injected then
            ngx.header["Content-Length"] = nil
        end
    elseif ctype:find("json", 1, true) then
        ctx.kind = "json"
    end
end

-- body_filter: https://github.com/openresty/lua-nginx-module#body_filter_by_lua (read 2026-12-07)
function _M.body_filter()
    local ctx = ngx.ctx
    if ngx.status ~= 200 or not ctx.counting then
        return
    end
    local chunk, eof = ngx.arg[1], ngx.arg[2]
    if ctx.kind == "sse" then
        filter_stream(ctx, chunk, eof)
    elseif ctx.kind == "json" then
        filter_json(ctx, chunk, eof)
    end
end

-- log (server level, so rate-limited and refused requests are logged too): count, then fill the variables the
-- usage log line is written from. A learner from outside the room's networks is not anyone's.
function _M.log()
    local learner = ngx.var.learner
    if not learner or learner == "" or ngx.var.from_the_room ~= "1" then
        return
    end
    if ngx.var.uri == "/v1/workshop/me" then
        return  -- the chat page asking for its own counts is not a request of the learner's
    end
    local ctx = ngx.ctx
    local prompt, completion, source = 0, 0, "none"
    if ctx.prompt then
        prompt, completion, source = ctx.prompt, ctx.completion, "server"
    elseif ctx.counting and ctx.kind == "sse" and (ctx.chunks or 0) > 0 then
        -- The stream ended before the server's usage (the learner hung up): its chunks are about a token each.
        completion, source = ctx.chunks, "chunks"
    end
    if prompt > 0 or completion > 0 then
        add(learner, prompt, completion)
    end
    local refused = ctx.refused or ""
    if refused == "" and ngx.status == 429 then
        refused = "rate"
    end
    ngx.var.usage_learner = learner
    ngx.var.usage_prompt = prompt
    ngx.var.usage_completion = completion
    ngx.var.usage_source = source
    ngx.var.usage_refused = refused
end

-- GET /v1/workshop/me: a learner's own counts and budget (the chat page shows them).
function _M.me(budget)
    local learner = ngx.var.learner
    local p, c = _M.totals(learner)
    local left = _M.left(learner, budget)
    ngx.header["Content-Type"] = "application/json"
    ngx.header["Cache-Control"] = "no-store"
    ngx.say(cjson.encode({learner = learner, prompt_tokens = p, completion_tokens = c,
                          token_budget = (budget and budget > 0) and budget or cjson.null,
                          tokens_left = left and math.max(left, 0) or cjson.null,
                          ends_in_s = ends_in() or cjson.null}))
end

return _M
