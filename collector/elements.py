"""Information elements (IANA IPFIX registry; NetFlow v9 uses the same numbers below 128).

Which element feeds which FlowBatch column, in order of preference: the first element of a
column's list that a template carries wins (tshark's normalisation does the same).
"""

from __future__ import annotations

# column -> element ids, first present wins
COLUMN_ELEMENTS: dict[str, tuple[int, ...]] = {
    "bytes": (1, 85, 23),  # octetDeltaCount, octetTotalCount, postOctetDeltaCount
    "packets": (2, 86, 24),  # packetDeltaCount, packetTotalCount, postPacketDeltaCount
    "protocol": (4,),
    "tos": (5,),
    "tcp_flags": (6,),
    "src_port": (7, 180, 182),
    "dst_port": (11, 181, 183),
    "input_if": (10, 252),
    "output_if": (14, 253),
    "icmp_type_code": (32, 139),
    "vlan": (58, 243, 59),
}

SRC_V4, DST_V4, SRC_V6, DST_V6 = 8, 12, 27, 28
IP_VERSION = 60
ICMP_TYPE_V4, ICMP_CODE_V4, ICMP_TYPE_V6, ICMP_CODE_V6 = 176, 177, 178, 179
FRAGMENT_FLAGS, FRAGMENT_OFFSET = 197, 88
IPV4_OPTIONS = 208

# time elements
FLOW_END_SYSUPTIME, FLOW_START_SYSUPTIME = 21, 22
FLOW_START_SECONDS, FLOW_END_SECONDS = 150, 151
FLOW_START_MILLISECONDS, FLOW_END_MILLISECONDS = 152, 153
FLOW_START_MICROSECONDS, FLOW_END_MICROSECONDS = 154, 155
FLOW_START_NANOSECONDS, FLOW_END_NANOSECONDS = 156, 157
FLOW_START_DELTA_US, FLOW_END_DELTA_US = 158, 159
SYSTEM_INIT_TIME_MS = 160
FLOW_DURATION_MS, FLOW_DURATION_US = 161, 162

# sampling elements (options data, sometimes data records)
SAMPLING_INTERVAL = 34
SAMPLING_ALGORITHM = 35
SAMPLER_ID = 48
SAMPLER_MODE = 49
SAMPLER_RANDOM_INTERVAL = 50
SELECTOR_ID = 302
SELECTOR_ALGORITHM = 304
SAMPLING_PACKET_INTERVAL = 305
SAMPLING_PACKET_SPACE = 306
SAMPLING_SIZE = 309
SAMPLING_POPULATION = 310

SAMPLING_ELEMENTS = frozenset(
    {
        SAMPLING_INTERVAL,
        SAMPLING_ALGORITHM,
        SAMPLER_ID,
        SAMPLER_MODE,
        SAMPLER_RANDOM_INTERVAL,
        SELECTOR_ID,
        SELECTOR_ALGORITHM,
        SAMPLING_PACKET_INTERVAL,
        SAMPLING_PACKET_SPACE,
        SAMPLING_SIZE,
        SAMPLING_POPULATION,
    }
)

#: elements that make a record a flow record (a data record with none of them, such as an
#: interface-name table sent as ordinary data, is not counted as traffic)
FLOW_KEY_ELEMENTS = frozenset({SRC_V4, DST_V4, SRC_V6, DST_V6, 1, 2, 85, 86, 23, 24})

#: elements whose value we read from options data
OPTION_ELEMENTS = SAMPLING_ELEMENTS | {SYSTEM_INIT_TIME_MS}

#: every element the record decoder reads, by id (enterprise 0 only)
USED_ELEMENTS = (
    frozenset(e for ids in COLUMN_ELEMENTS.values() for e in ids)
    | {SRC_V4, DST_V4, SRC_V6, DST_V6, IP_VERSION}
    | {ICMP_TYPE_V4, ICMP_CODE_V4, ICMP_TYPE_V6, ICMP_CODE_V6, FRAGMENT_FLAGS, FRAGMENT_OFFSET}
    | {
        FLOW_END_SYSUPTIME,
        FLOW_START_SYSUPTIME,
        FLOW_START_SECONDS,
        FLOW_END_SECONDS,
        FLOW_START_MILLISECONDS,
        FLOW_END_MILLISECONDS,
        FLOW_START_MICROSECONDS,
        FLOW_END_MICROSECONDS,
        FLOW_START_NANOSECONDS,
        FLOW_END_NANOSECONDS,
        FLOW_START_DELTA_US,
        FLOW_END_DELTA_US,
        FLOW_DURATION_MS,
        FLOW_DURATION_US,
    }
    | OPTION_ELEMENTS
)

VARIABLE_LENGTH = 65535
