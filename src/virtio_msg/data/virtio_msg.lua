-- virtio-msg dissector for Wireshark and tshark, shipped with "virtio-msg for Python".
--
-- Reads captures written by `virtio-msg ... --capture FILE`: link type
-- LINKTYPE_USER5 (152), every frame a 12-byte little-endian pseudo-header
-- (version, direction, channel, profile, bus instance, connection, maximum
-- message size, side, flags) followed by one virtio-msg message exactly as it
-- crossed the channel.  Flags bit 0 marks the channel's own protocol frames
-- (socket ANNOUNCE, ADD, REMOVE; an empty one is END, the connection's hang-up).  docs/capture.md describes the format and every field.
--
--   tshark -X lua_script:$(virtio-msg wireshark path) -r x.pcapng -Y virtio_msg
--   virtio-msg wireshark install      (copies this file to the Lua plugin folder)
--
-- Field names: virtio_msg.<key> for the header keys of `virtio-msg decode`
-- (type, msg_id, name, response, bus, dev_num, token, msg_size) and
-- virtio_msg.fields.<name> for each payload field, named as `decode` names it.
-- Malformed messages (the same strict rules as the Python codec) get expert info
-- "virtio_msg.malformed"; requests and responses are paired by token (spec) or
-- by the oldest unanswered request with the same id (linux-rfc1); use tshark -2
-- to see "response in" on requests.

local vm = Proto("virtio_msg", "virtio-msg")

-- BEGIN GENERATED TABLES (python -m virtio_msg.capture.dissector)
local MESSAGES = {
  ["spec"] = {
    [0x002] = {name = "GET_DEVICE_INFO", fields = {}},
    [0x003] = {name = "GET_DEVICE_FEATURES", fields = {{"block_index", "u32"}, {"num_blocks", "u32"}}},
    [0x004] = {name = "SET_DRIVER_FEATURES", fields = {{"block_index", "u32"}, {"num_blocks", "u32"}}, tail = {"features", "u32-array", 2}},
    [0x005] = {name = "GET_CONFIG", fields = {{"offset", "u32"}, {"length", "u32"}}},
    [0x006] = {name = "SET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"length", "u32"}}, tail = {"data", "bytes-exact", 3}},
    [0x007] = {name = "GET_DEVICE_STATUS", fields = {}},
    [0x008] = {name = "SET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x009] = {name = "GET_VQUEUE", fields = {{"index", "u32"}}},
    [0x00a] = {name = "SET_VQUEUE", fields = {{"index", "u32"}, {"flags", "u32"}, {"size", "u32"}, {"reserved", "u32"}, {"desc_addr", "u64"}, {"driver_addr", "u64"}, {"device_addr", "u64"}}},
    [0x00b] = {name = "RESET_VQUEUE", fields = {{"index", "u32"}}},
    [0x00c] = {name = "GET_SHM", fields = {{"shmid", "u32"}}},
    [0x040] = {name = "EVENT_CONFIG", fields = {{"device_status", "u32"}, {"generation", "u32"}, {"offset", "u32"}, {"length", "u32"}}, tail = {"data", "bytes-optional", 4}},
    [0x041] = {name = "EVENT_AVAIL", fields = {{"vq_index", "u32"}, {"next_offset", "u32"}}},
    [0x042] = {name = "EVENT_USED", fields = {{"vq_index", "u32"}}},
    [0x102] = {name = "GET_DEVICE_INFO", fields = {{"device_id", "u32"}, {"vendor_id", "u32"}, {"device_uuid", "b16"}, {"num_feature_blocks", "u32"}, {"config_size", "u32"}, {"max_virtqueues", "u32"}, {"admin_vq_start", "u32"}, {"admin_vq_count", "u32"}}},
    [0x103] = {name = "GET_DEVICE_FEATURES", fields = {{"block_index", "u32"}, {"num_blocks", "u32"}}, tail = {"features", "u32-array", 2}},
    [0x104] = {name = "SET_DRIVER_FEATURES", fields = {}},
    [0x105] = {name = "GET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"length", "u32"}}, tail = {"data", "bytes-exact", 3}},
    [0x106] = {name = "SET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"length", "u32"}}, tail = {"data", "bytes-optional", 3}},
    [0x107] = {name = "GET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x108] = {name = "SET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x109] = {name = "GET_VQUEUE", fields = {{"index", "u32"}, {"max_size", "u32"}, {"cur_size", "u32"}, {"flags", "u32"}, {"desc_addr", "u64"}, {"driver_addr", "u64"}, {"device_addr", "u64"}}},
    [0x10a] = {name = "SET_VQUEUE", fields = {}},
    [0x10b] = {name = "RESET_VQUEUE", fields = {}},
    [0x10c] = {name = "GET_SHM", fields = {{"shmid", "u32"}, {"reserved", "u32"}, {"length", "u64"}, {"address", "u64"}}},
    [0x202] = {name = "GET_DEVICES", fields = {{"offset", "u16"}, {"count", "u16"}}},
    [0x203] = {name = "PING", fields = {{"data", "u32"}}},
    [0x240] = {name = "EVENT_DEVICE", fields = {{"device_number", "u16"}, {"device_bus_state", "u16"}}},
    [0x302] = {name = "GET_DEVICES", fields = {{"offset", "u16"}, {"next_offset", "u16"}, {"count", "u16"}}, tail = {"bitmap", "bitmap", 3}},
    [0x303] = {name = "PING", fields = {{"data", "u32"}}},
  },
  ["linux-rfc1"] = {
    [0x002] = {name = "DEVICE_INFO", fields = {}},
    [0x003] = {name = "GET_DEV_FEATURES", fields = {{"index", "u32"}, {"num", "u32"}}},
    [0x004] = {name = "SET_DRV_FEATURES", fields = {{"index", "u32"}, {"num", "u32"}}, tail = {"features", "u32-array", 2}},
    [0x005] = {name = "GET_CONFIG", fields = {{"offset", "u32"}, {"size", "u32"}}},
    [0x006] = {name = "SET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"size", "u32"}}, tail = {"config", "bytes-exact", 3}},
    [0x007] = {name = "GET_DEVICE_STATUS", fields = {}},
    [0x008] = {name = "SET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x009] = {name = "GET_VQUEUE", fields = {{"index", "u32"}}},
    [0x00a] = {name = "SET_VQUEUE", fields = {{"index", "u32"}, {"unused", "u32"}, {"size", "u32"}, {"descriptor_addr", "u64"}, {"driver_addr", "u64"}, {"device_addr", "u64"}}},
    [0x00b] = {name = "RESET_VQUEUE", fields = {{"index", "u32"}}},
    [0x00c] = {name = "GET_SHM", fields = {{"index", "u32"}}},
    [0x040] = {name = "EVENT_CONFIG", fields = {{"status", "u32"}, {"generation", "u32"}, {"offset", "u32"}, {"size", "u32"}}, tail = {"config", "bytes-optional", 4}},
    [0x041] = {name = "EVENT_AVAIL", fields = {{"index", "u32"}, {"next_offset_wrap", "u32"}}},
    [0x042] = {name = "EVENT_USED", fields = {{"index", "u32"}}},
    [0x102] = {name = "DEVICE_INFO", fields = {{"device_id", "u32"}, {"vendor_id", "u32"}, {"num_feature_bits", "u32"}, {"config_size", "u32"}, {"max_vq_count", "u32"}, {"admin_vq_start_idx", "u16"}, {"admin_vq_count", "u16"}}},
    [0x103] = {name = "GET_DEV_FEATURES", fields = {{"index", "u32"}, {"num", "u32"}}, tail = {"features", "u32-array", 2}},
    [0x104] = {name = "SET_DRV_FEATURES", fields = {}},
    [0x105] = {name = "GET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"size", "u32"}}, tail = {"config", "bytes-exact", 3}},
    [0x106] = {name = "SET_CONFIG", fields = {{"generation", "u32"}, {"offset", "u32"}, {"size", "u32"}}, tail = {"config", "bytes-optional", 3}},
    [0x107] = {name = "GET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x108] = {name = "SET_DEVICE_STATUS", fields = {{"status", "u32"}}},
    [0x109] = {name = "GET_VQUEUE", fields = {{"index", "u32"}, {"max_size", "u32"}, {"size", "u32"}, {"descriptor_addr", "u64"}, {"driver_addr", "u64"}, {"device_addr", "u64"}}},
    [0x10a] = {name = "SET_VQUEUE", fields = {}},
    [0x10b] = {name = "RESET_VQUEUE", fields = {}},
    [0x10c] = {name = "GET_SHM", fields = {{"index", "u32"}, {"count", "u32"}, {"addr", "u32"}}},
    [0x141] = {name = "EVENT_AVAIL", fields = {}},
    [0x202] = {name = "BUS_GET_DEVICES", fields = {{"offset", "u16"}, {"num", "u16"}}},
    [0x203] = {name = "BUS_PING", fields = {{"data", "u32"}}},
    [0x240] = {name = "BUS_EVENT_DEVICE", fields = {{"dev_num", "u16"}, {"dev_state", "u16"}}},
    [0x302] = {name = "BUS_GET_DEVICES", fields = {{"offset", "u16"}, {"num", "u16"}, {"next_offset", "u16"}}, tail = {"devices", "bitmap", 2}},
    [0x303] = {name = "BUS_PING", fields = {{"data", "u32"}}},
  },
}
local CHANNEL_MESSAGES = {
    [0x280] = {name = "ANNOUNCE", fields = {{"version", "u8"}, {"profile", "u8"}, {"max_msg_size", "u16"}, {"revision", "u32"}, {"transport_features", "u64"}, {"region_base", "u64"}, {"region_size", "u64"}, {"timeout_ms", "u32"}, {"max_devices", "u16"}}},
    [0x281] = {name = "ADD", fields = {{"dev_num", "u16"}, {"reserved", "u16"}}},
    [0x381] = {name = "ADD", fields = {{"dev_num", "u16"}, {"reserved", "u16"}, {"status", "u32"}}},
    [0x282] = {name = "REMOVE", fields = {{"dev_num", "u16"}, {"reserved", "u16"}}},
    [0x382] = {name = "REMOVE", fields = {{"dev_num", "u16"}, {"reserved", "u16"}, {"status", "u32"}}},
}
-- END GENERATED TABLES

local PH_LEN = 12
local HEADER_SIZE = { ["spec"] = 8, ["linux-rfc1"] = 6 }
local MAX_SIZE_LIMITS = { ["spec"] = { 52, 65535 }, ["linux-rfc1"] = { 44, 65535 } }
local PROFILES = { [0] = "spec", [1] = "linux-rfc1" }
local DIRECTIONS = { [0] = "driver->device", [1] = "device->driver" }
local CHANNELS = { [0] = "in-process", [1] = "socket", [2] = "kernel", [3] = "vhost-user" }
local SIDES = { [0] = "bus", [1] = "backend" }
local WIDTH = { u8 = 1, u16 = 2, u32 = 4, u64 = 8 }
local SOCKET_CHANNEL = 1
local KERNEL_CHANNEL = 2

local function bit_set(value, bit)
    return math.floor(value / bit) % 2 == 1
end

local function is_hex_field(name)
    return name:find("addr") ~= nil or name == "features" or name == "region_base"
        or name == "transport_features"
end

local f = {
    ph_version = ProtoField.uint8("virtio_msg.capture_version", "Pseudo-header version"),
    direction = ProtoField.uint8("virtio_msg.direction", "Direction", base.DEC, DIRECTIONS),
    channel = ProtoField.uint8("virtio_msg.channel", "Channel", base.DEC, CHANNELS),
    profile = ProtoField.uint8("virtio_msg.profile", "Profile", base.DEC, PROFILES),
    bus_instance = ProtoField.uint16("virtio_msg.bus_instance", "Bus instance"),
    connection = ProtoField.uint16("virtio_msg.connection", "Connection"),
    max_size = ProtoField.uint16("virtio_msg.max_size", "Maximum message size"),
    side = ProtoField.uint8("virtio_msg.side", "Captured at", base.DEC, SIDES),
    control = ProtoField.bool("virtio_msg.control", "Channel control frame", 8, nil, 0x01),
    type = ProtoField.uint8("virtio_msg.type", "Type", base.HEX),
    response = ProtoField.bool("virtio_msg.response", "Response", 8, nil, 0x01),
    bus = ProtoField.bool("virtio_msg.bus", "Bus message", 8, nil, 0x02),
    msg_id = ProtoField.uint8("virtio_msg.msg_id", "Message id", base.HEX),
    event = ProtoField.bool("virtio_msg.event", "Event id", 8, nil, 0x40),
    name = ProtoField.string("virtio_msg.name", "Message"),
    dev_num = ProtoField.uint16("virtio_msg.dev_num", "Device number"),
    token = ProtoField.uint16("virtio_msg.token", "Token"),
    msg_size = ProtoField.uint16("virtio_msg.msg_size", "Message size"),
    extra = ProtoField.bytes("virtio_msg.extra", "Ignored bytes after the fixed payload"),
    trailing = ProtoField.bytes("virtio_msg.trailing", "Bytes after msg_size"),
    response_in = ProtoField.framenum("virtio_msg.response_in", "Response in", base.NONE,
        frametype.RESPONSE),
    response_to = ProtoField.framenum("virtio_msg.response_to", "Request in", base.NONE,
        frametype.REQUEST),
    rtt = ProtoField.relative_time("virtio_msg.time", "Time since request"),
}

-- One ProtoField per payload field name and kind (integer or bytes).
local int_fields, bytes_fields = {}, {}
local function declare(name, kind)
    local abbr = "virtio_msg.fields." .. name
    if WIDTH[kind] ~= nil then
        if int_fields[name] == nil then
            int_fields[name] = ProtoField.uint64(abbr, name, is_hex_field(name) and base.HEX
                or base.DEC)
        end
    elseif bytes_fields[name] == nil then
        bytes_fields[name] = ProtoField.bytes(abbr, name)
    end
end
for _, table_ in ipairs({ MESSAGES["spec"], MESSAGES["linux-rfc1"], CHANNEL_MESSAGES }) do
    for _, msg in pairs(table_) do
        for _, fld in ipairs(msg.fields) do
            declare(fld[1], fld[2])
        end
        if msg.tail ~= nil then
            declare(msg.tail[1], msg.tail[2] == "u32-array" and "u32" or "bytes")
        end
    end
end
declare("payload", "bytes")

local all_fields = {}
for _, pf in pairs(f) do all_fields[#all_fields + 1] = pf end
for _, pf in pairs(int_fields) do all_fields[#all_fields + 1] = pf end
for _, pf in pairs(bytes_fields) do all_fields[#all_fields + 1] = pf end
vm.fields = all_fields

local e_malformed = ProtoExpert.new("virtio_msg.malformed", "Malformed virtio-msg message",
    expert.group.MALFORMED, expert.severity.ERROR)
local e_stale = ProtoExpert.new("virtio_msg.stale", "Bytes after msg_size (kernel buffer residue)",
    expert.group.PROTOCOL, expert.severity.NOTE)
local e_size = ProtoExpert.new("virtio_msg.size_mismatch", "Frame longer than msg_size",
    expert.group.PROTOCOL, expert.severity.WARN)
local e_reserved = ProtoExpert.new("virtio_msg.reserved_type", "Reserved type bits set",
    expert.group.PROTOCOL, expert.severity.WARN)
vm.experts = { e_malformed, e_stale, e_size, e_reserved }

-- Request/response pairing state, rebuilt on every (re)load of a capture.
local waiting, partner, rtt = {}, {}, {}
function vm.init()
    waiting, partner, rtt = {}, {}, {}
end

local function tail_size(kind, count)
    if kind == "u32-array" then return count * 4 end
    if kind == "bitmap" then return math.floor((count + 7) / 8) end
    return count
end

-- Adds the payload fields; returns nil or the reason the payload is malformed.
local function dissect_payload(tvb, tree, msg, off, avail, exact)
    local fixed = 0
    for _, fld in ipairs(msg.fields) do
        fixed = fixed + (WIDTH[fld[2]] or tonumber(fld[2]:sub(2)))
    end
    if avail < fixed or (exact and avail ~= fixed) then
        return string.format("%s needs a %d-byte payload, msg_size leaves %d", msg.name, fixed,
            avail)
    end
    local values = {}
    local pos = off
    for i, fld in ipairs(msg.fields) do
        local w = WIDTH[fld[2]]
        if w ~= nil then
            tree:add_le(int_fields[fld[1]], tvb(pos, w))
            if w <= 4 then values[i] = tvb(pos, w):le_uint() end
        else
            w = tonumber(fld[2]:sub(2))
            tree:add(bytes_fields[fld[1]], tvb(pos, w))
        end
        pos = pos + w
    end
    local rest = avail - fixed
    if msg.tail == nil then
        if rest > 0 then tree:add(f.extra, tvb(pos, rest)) end
        return nil
    end
    local name, kind, count_at = msg.tail[1], msg.tail[2], msg.tail[3]
    local count = values[count_at]
    local want = tail_size(kind, count)
    if rest ~= want and not (kind == "bytes-optional" and rest == 0) then
        local extra = kind == "bytes-optional" and " (or none)" or ""
        return string.format("%s=%d needs %d bytes%s, message has %d", msg.fields[count_at][1],
            count, want, extra, rest)
    end
    if kind == "u32-array" then
        for i = 0, count - 1 do tree:add_le(int_fields[name], tvb(pos + 4 * i, 4)) end
    elseif rest > 0 then
        tree:add(bytes_fields[name], tvb(pos, rest))
    end
    return nil
end

function vm.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol = "virtio-msg"
    local len = tvb:len()
    local root = tree:add(vm, tvb())
    if len < PH_LEN then
        root:add_proto_expert_info(e_malformed, "frame shorter than the 12-byte pseudo-header")
        return
    end
    local ph = root:add(tvb(0, PH_LEN), "Capture pseudo-header")
    ph:add(f.ph_version, tvb(0, 1))
    local version = tvb(0, 1):uint()
    local profile = PROFILES[tvb(3, 1):uint()]
    if version ~= 1 or profile == nil then
        ph:add_proto_expert_info(e_malformed, "unknown pseudo-header version or profile")
        return
    end
    local direction = tvb(1, 1):uint()
    local channel = tvb(2, 1):uint()
    ph:add(f.direction, tvb(1, 1))
    ph:add(f.channel, tvb(2, 1))
    ph:add(f.profile, tvb(3, 1))
    ph:add_le(f.bus_instance, tvb(4, 2))
    ph:add_le(f.connection, tvb(6, 2))
    ph:add_le(f.max_size, tvb(8, 2))
    ph:add(f.side, tvb(10, 1))
    local flags = tvb(11, 1):uint()
    local control = flags % 2 == 1
    local flags_item = ph:add(f.control, tvb(11, 1))

    local m = PH_LEN
    local n = len - PH_LEN
    local hs = HEADER_SIZE[profile]
    local function malformed(item, text)
        item:add_proto_expert_info(e_malformed, text)
        pinfo.cols.info:append(" [malformed]")
    end
    pinfo.cols.info = DIRECTIONS[direction]
    pinfo.cols.src = direction == 0 and "driver" or "device"
    pinfo.cols.dst = direction == 0 and "device" or "driver"
    if flags > 1 then
        malformed(flags_item, string.format("unknown pseudo-header flags 0x%02x", flags))
        return
    end
    if control and n == 0 then
        local who = direction == 0 and "bus" or "backend"
        root:add(f.name, tvb(11, 1), "END")
        root:append_text(", END (connection closed by the " .. who .. ")")
        pinfo.cols.info = DIRECTIONS[direction] .. " END (connection closed by the " .. who .. ")"
        return
    end
    if n < hs then
        malformed(root, string.format("truncated header: %d bytes, the header is %d", n, hs))
        return
    end
    local typ = tvb(m, 1):uint()
    local msg_id = tvb(m + 1, 1):uint()
    local dev_num = tvb(m + 2, 2):le_uint()
    local token = nil
    local size
    local response = bit_set(typ, 1)
    local is_bus = bit_set(typ, 2)
    local key = (typ % 4) * 256 + msg_id
    local msg = nil
    local exact = false
    if (control or channel == SOCKET_CHANNEL) and is_bus then
        msg = CHANNEL_MESSAGES[key]
        exact = msg ~= nil
    end
    local not_control = control and msg == nil
    if msg == nil then msg = MESSAGES[profile][key] end
    local name = "unknown"
    if msg ~= nil then
        name = msg.name
    elseif bit_set(msg_id, 0x80) then
        name = "IMPLEMENTATION_DEFINED"
    end
    local info = name .. (response and " resp" or "")
    if not is_bus then info = info .. " dev " .. dev_num end
    if hs == 8 then info = info .. " tok " .. tvb(m + 4, 2):le_uint() end
    pinfo.cols.info = DIRECTIONS[direction] .. " " .. info
    root:append_text(", " .. info)
    local type_item = root:add(f.type, tvb(m, 1))
    root:add(f.response, tvb(m, 1))
    root:add(f.bus, tvb(m, 1))
    root:add(f.msg_id, tvb(m + 1, 1))
    root:add(f.event, tvb(m + 1, 1))
    root:add(f.name, tvb(m + 1, 1), name)
    root:add_le(f.dev_num, tvb(m + 2, 2))
    local size_item
    if hs == 8 then
        token = tvb(m + 4, 2):le_uint()
        root:add_le(f.token, tvb(m + 4, 2))
        size = tvb(m + 6, 2):le_uint()
        size_item = root:add_le(f.msg_size, tvb(m + 6, 2))
    else
        size = tvb(m + 4, 2):le_uint()
        size_item = root:add_le(f.msg_size, tvb(m + 4, 2))
    end
    if typ > 3 then type_item:add_proto_expert_info(e_reserved, "reserved type bits 2-7 set") end
    if not_control then
        malformed(root, string.format("control frame with %s msg_id 0x%02x, not a socket "
            .. "channel message", is_bus and "bus" or "transport", msg_id))
        return
    end
    local limits = MAX_SIZE_LIMITS[profile]
    local max = tvb(8, 2):le_uint()
    if max < limits[1] or max > limits[2] then max = limits[2] end
    if size < hs then
        malformed(size_item, string.format("%d is smaller than the %d-byte header", size, hs))
        return
    end
    if size > n then
        malformed(size_item, string.format("%d is larger than the %d-byte buffer", size, n))
        return
    end
    if size > max then
        malformed(size_item, string.format("%d exceeds the maximum message size %d", size, max))
        return
    end
    if n > size then
        root:add(f.trailing, tvb(m + size, n - size))
        if channel == KERNEL_CHANNEL then
            root:add_proto_expert_info(e_stale, string.format("%d stale bytes", n - size))
        else
            root:add_proto_expert_info(e_size, string.format("%d bytes after msg_size", n - size))
        end
    end
    if is_bus and dev_num ~= 0 then
        malformed(root, string.format("bus message with dev_num %d (must be 0)", dev_num))
        return
    end
    local rfc1_kick = profile == "linux-rfc1" and not is_bus and msg_id == 0x41
    if response and bit_set(msg_id, 0x40) and not rfc1_kick then
        malformed(type_item, string.format("event id 0x%02x carries the response bit", msg_id))
        return
    end
    local problem = nil
    local fields = root:add(tvb(m + hs, size - hs), "Payload")
    if msg ~= nil then
        problem = dissect_payload(tvb, fields, msg, m + hs, size - hs, exact)
    elseif name == "IMPLEMENTATION_DEFINED" then
        if size > hs then fields:add(bytes_fields["payload"], tvb(m + hs, size - hs)) end
    else
        problem = string.format("unknown %s %s msg_id 0x%02x", is_bus and "bus" or "transport",
            response and "response" or "request/event", msg_id)
    end
    if problem ~= nil then
        malformed(fields, problem)
        return
    end

    -- Pairing (first pass builds it; every pass shows it).
    local is_event = (bit_set(msg_id, 0x40) and not rfc1_kick) or name == "ANNOUNCE"
    local kind = response and "response" or (is_event and "event" or "request")
    if not pinfo.visited and kind ~= "event" then
        local req_dir = direction
        if kind == "response" then req_dir = 1 - direction end
        local k = table.concat({ tvb(4, 2):le_uint(), channel, tvb(6, 2):le_uint(), req_dir,
            is_bus and 1 or 0, dev_num, msg_id, token ~= nil and token or "-" }, ":")
        if kind == "request" then
            local q = waiting[k] or {}
            q[#q + 1] = { pinfo.number, pinfo.abs_ts }
            waiting[k] = q
        else
            local q = waiting[k]
            if q ~= nil and #q > 0 then
                local req = table.remove(q, 1)
                partner[req[1]] = pinfo.number
                partner[pinfo.number] = req[1]
                rtt[pinfo.number] = pinfo.abs_ts - req[2]
            end
        end
    end
    local other = partner[pinfo.number]
    if other ~= nil then
        if kind == "request" then
            root:add(f.response_in, other):set_generated()
        else
            root:add(f.response_to, other):set_generated()
            local secs = rtt[pinfo.number]
            local whole = math.floor(secs)
            local nsecs = math.floor((secs - whole) * 1e9 + 0.5)
            root:add(f.rtt, NSTime.new(whole, nsecs)):set_generated()
        end
    end
end

local encaps = wtap_encaps or wtap
DissectorTable.get("wtap_encap"):add(encaps.USER5, vm)
