--[[
  A member of a lexical index ({kc:s}:idx:name, {kc:s}:idx:worker; all at
  score 0, so ZRANGEBYLEX orders them by their bytes): "<text>\0<score, 20
  digits><id>", so one text's entries are in registration order
  (app/store/lexical.py reads them).
]]
local function lexicalEntry(text, score, id)
  return text .. "\0" .. string.rep("0", 20 - #score) .. score .. id
end
