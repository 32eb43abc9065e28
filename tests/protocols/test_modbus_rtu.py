"""protocols/modbus_rtu.py under CPython: cross-checks with pymodbus 3.16 (an independent RTU
implementation), property round trips, and fuzzing of the one-shot parsers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.bit_message import (
    ReadCoilsRequest,
    ReadCoilsResponse,
    ReadDiscreteInputsRequest,
    ReadDiscreteInputsResponse,
    WriteMultipleCoilsRequest,
    WriteMultipleCoilsResponse,
    WriteSingleCoilRequest,
    WriteSingleCoilResponse,
)
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
    ReadInputRegistersResponse,
    ReadWriteMultipleRegistersRequest,
    ReadWriteMultipleRegistersResponse,
    WriteMultipleRegistersRequest,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterRequest,
    WriteSingleRegisterResponse,
)

from protocols import modbus_rtu as rtu
from protocols import modbus_server as server
from protocols.errors import ProtocolError
from protocols.modbus_rtu import ModbusRequest
from tests.protocols.fuzz import DEFAULT_EXAMPLES, LONG_EXAMPLES, fuzz_settings, mutated

CROSS_EXAMPLES = 200

# --- strategies (also used by test_modbus_receiver.py) -----------------------------------------

UNITS = st.one_of(st.integers(1, 247), st.just(rtu.ANY_ADDRESS))
REGISTER = st.integers(0, 0xFFFF)


def _span(limit: int) -> st.SearchStrategy[tuple[int, int]]:
    """(address, quantity) with 1 <= quantity <= limit and the range inside 0..65535."""
    return st.integers(1, limit).flatmap(lambda q: st.tuples(st.integers(0, 0x10000 - q), st.just(q)))


@st.composite
def requests(draw: st.DrawFn, functions: tuple[int, ...] = rtu.FUNCTIONS,
             broadcast: bool = False) -> ModbusRequest:
    """A request inside every limit of the spec, for any supported function."""
    fn = draw(st.sampled_from(functions))
    unit = draw(UNITS)
    if broadcast and fn in (0x05, 0x06, 0x0F, 0x10) and draw(st.booleans()):
        unit = 0
    if fn in (0x01, 0x02, 0x03, 0x04):
        address, quantity = draw(_span(rtu.READ_LIMITS[fn]))
        return ModbusRequest(unit, fn, address, quantity)
    if fn in (0x05, 0x06):
        value = draw(st.booleans()) if fn == 0x05 else draw(REGISTER)
        return ModbusRequest(unit, fn, draw(st.integers(0, 0xFFFF)), 1, [value])
    item = st.booleans() if fn == 0x0F else REGISTER
    values = draw(st.lists(item, min_size=1, max_size=rtu.WRITE_LIMITS[fn]))
    address = draw(st.integers(0, 0x10000 - len(values)))
    if fn == 0x17:
        read_address, read_quantity = draw(_span(rtu.READ_LIMITS[fn]))
        return ModbusRequest(unit, fn, read_address, read_quantity, values, address)
    return ModbusRequest(unit, fn, address, len(values), values)


def read_values(draw: st.DrawFn, req: ModbusRequest) -> list[Any] | None:
    """Values a device could answer `req` with (None for the echoing writes)."""
    if req.function in (0x01, 0x02):
        return draw(st.lists(st.booleans(), min_size=req.quantity, max_size=req.quantity))
    if req.function in (0x03, 0x04, 0x17):
        return draw(st.lists(REGISTER, min_size=req.quantity, max_size=req.quantity))
    return None


def decoded(req: ModbusRequest, values: list[Any] | None) -> Any:
    """What parse_response returns for the normal reply to `req` carrying `values`."""
    if values is not None:
        return values
    if req.function == 0x05:
        return (req.address, req.values[0])
    if req.function == 0x06:
        return (req.address, req.values[0])
    return (req.address, req.quantity)


# --- pymodbus adapters ---------------------------------------------------------------------------

def pymodbus_decode(adu: bytes, *, is_server: bool) -> ModbusPDU | None:
    used, pdu = FramerRTU(DecodePDU(is_server)).handleFrame(adu, 0, 0)
    assert used == len(adu)
    return pdu


def pymodbus_frame(pdu: ModbusPDU) -> bytes:
    return FramerRTU(DecodePDU(False)).buildFrame(pdu)


def pymodbus_request(req: ModbusRequest) -> ModbusPDU:
    fn, u = req.function, req.unit
    if fn in (0x01, 0x02, 0x03, 0x04):
        cls = {1: ReadCoilsRequest, 2: ReadDiscreteInputsRequest, 3: ReadHoldingRegistersRequest,
               4: ReadInputRegistersRequest}[fn]
        return cls(address=req.address, count=req.quantity, dev_id=u)
    if fn == 0x05:
        return WriteSingleCoilRequest(address=req.address, bits=[req.values[0]], dev_id=u)
    if fn == 0x06:
        return WriteSingleRegisterRequest(address=req.address, registers=[req.values[0]], dev_id=u)
    if fn == 0x0F:
        return WriteMultipleCoilsRequest(address=req.address, bits=req.values, dev_id=u)
    if fn == 0x10:
        return WriteMultipleRegistersRequest(address=req.address, registers=req.values, dev_id=u)
    return ReadWriteMultipleRegistersRequest(read_address=req.address, read_count=req.quantity,
                                             write_address=req.write_address,
                                             write_registers=req.values, dev_id=u)


def pymodbus_response(req: ModbusRequest, values: list[Any] | None) -> ModbusPDU:
    fn, u = req.function, req.unit
    if fn in (0x01, 0x02):
        cls = ReadCoilsResponse if fn == 0x01 else ReadDiscreteInputsResponse
        return cls(bits=values, dev_id=u)
    if fn in (0x03, 0x04, 0x17):
        cls = {3: ReadHoldingRegistersResponse, 4: ReadInputRegistersResponse,
               0x17: ReadWriteMultipleRegistersResponse}[fn]
        return cls(registers=values, dev_id=u)
    if fn == 0x05:
        return WriteSingleCoilResponse(address=req.address, bits=[req.values[0]], dev_id=u)
    if fn == 0x06:
        return WriteSingleRegisterResponse(address=req.address, registers=[req.values[0]], dev_id=u)
    cls = WriteMultipleCoilsResponse if fn == 0x0F else WriteMultipleRegistersResponse
    return cls(address=req.address, count=req.quantity, dev_id=u)


def pymodbus_fields(pdu: ModbusPDU) -> ModbusRequest:
    """A pymodbus request PDU's fields as a ModbusRequest, to compare with ours."""
    fn, u = pdu.function_code, pdu.dev_id
    if fn in (0x01, 0x02, 0x03, 0x04):
        return ModbusRequest(u, fn, pdu.address, pdu.count)
    if fn == 0x05:
        return ModbusRequest(u, fn, pdu.address, 1, [bool(pdu.bits[0])])
    if fn == 0x06:
        return ModbusRequest(u, fn, pdu.address, 1, [pdu.registers[0]])
    if fn == 0x0F:
        return ModbusRequest(u, fn, pdu.address, pdu.count, list(pdu.bits))
    if fn == 0x10:
        return ModbusRequest(u, fn, pdu.address, pdu.count, list(pdu.registers))
    return ModbusRequest(u, fn, pdu.read_address, pdu.read_count, list(pdu.write_registers),
                         pdu.write_address)


# --- cross-checks with pymodbus --------------------------------------------------------------------

@fuzz_settings(CROSS_EXAMPLES)
@given(requests())
def test_pymodbus_accepts_our_requests(req: ModbusRequest) -> None:
    adu = rtu.build_request(req, any_address=True)
    pdu = pymodbus_decode(adu, is_server=True)
    assert pdu is not None, adu.hex(" ")
    assert pymodbus_fields(pdu) == req


@fuzz_settings(CROSS_EXAMPLES)
@given(st.data())
def test_pymodbus_accepts_our_responses(data: st.DataObject) -> None:
    req = data.draw(requests())
    values = read_values(data.draw, req)
    pdu = pymodbus_decode(server.build_response(req, values), is_server=False)
    assert pdu is not None and pdu.function_code == req.function and pdu.dev_id == req.unit
    if req.function in (0x01, 0x02):
        assert pdu.bits[:req.quantity] == values and not any(pdu.bits[req.quantity:])
    elif req.function in (0x03, 0x04, 0x17):
        assert pdu.registers == values
    elif req.function == 0x05:
        assert (pdu.address, pdu.bits) == (req.address, [req.values[0]])
    elif req.function == 0x06:
        assert (pdu.address, pdu.registers) == (req.address, req.values)
    else:
        assert (pdu.address, pdu.count) == (req.address, req.quantity)


@fuzz_settings(CROSS_EXAMPLES)
@given(requests())
def test_we_parse_pymodbus_requests(req: ModbusRequest) -> None:
    adu = pymodbus_frame(pymodbus_request(req))
    assert rtu.parse_request(adu) == req
    assert adu == rtu.build_request(req, any_address=True)


@fuzz_settings(CROSS_EXAMPLES)
@given(st.data())
def test_we_parse_pymodbus_responses(data: st.DataObject) -> None:
    req = data.draw(requests())
    values = read_values(data.draw, req)
    adu = pymodbus_frame(pymodbus_response(req, values))
    assert rtu.parse_response(rtu.build_request(req, any_address=True), adu) == decoded(req, values)


@fuzz_settings(CROSS_EXAMPLES)
@given(requests(), st.integers(1, 255))
def test_exceptions_agree_with_pymodbus(req: ModbusRequest, code: int) -> None:
    ours = server.build_exception(req.unit, req.function, code)
    theirs = pymodbus_frame(ExceptionResponse(req.function, code, device_id=req.unit))
    theirs_pdu = pymodbus_decode(ours, is_server=False)
    assert ours == theirs
    assert theirs_pdu is not None and theirs_pdu.exception_code == code
    with pytest.raises(rtu.ModbusException) as info:
        rtu.parse_response(req, theirs)
    exc = info.value
    assert (exc.unit, exc.function, exc.code) == (req.unit, req.function, code)
    assert exc.name == rtu.EXCEPTION_NAMES.get(code, "unknown exception code")
    assert not isinstance(exc, ProtocolError)


def test_every_function_code_is_cross_checked() -> None:
    # The strategies above draw from rtu.FUNCTIONS; make sure that is the brief's list.
    assert set(rtu.FUNCTIONS) == {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0F, 0x10, 0x17}


# --- property round trips --------------------------------------------------------------------------

@fuzz_settings(300)
@given(requests(broadcast=True))
def test_request_round_trip(req: ModbusRequest) -> None:
    adu = rtu.build_request(req, any_address=True)
    assert len(adu) <= rtu.MAX_ADU and rtu.crc16_modbus(adu) == 0
    assert rtu.parse_request(adu) == req
    assert rtu.request_length(adu) == len(adu)
    for cut in range(2, min(len(adu), 12)):
        assert rtu.request_length(adu[:cut]) in (0, len(adu))


@fuzz_settings(300)
@given(st.data())
def test_response_round_trip(data: st.DataObject) -> None:
    req = data.draw(requests())
    values = read_values(data.draw, req)
    resp = server.build_response(req, values)
    assert len(resp) == rtu.expected_response_length(req)
    assert rtu.response_length(resp, req.function) == len(resp)
    assert rtu.response_length(resp) == len(resp)
    assert rtu.parse_response(req, resp) == decoded(req, values)


@fuzz_settings(300)
@given(requests(broadcast=True))
def test_broadcasts_get_no_response(req: ModbusRequest) -> None:
    if req.unit != 0:
        return
    assert rtu.expected_response_length(req) == 0
    with pytest.raises(rtu.ModbusRequestError):
        server.build_response(req)
    with pytest.raises(rtu.ModbusFrameError):
        rtu.parse_response(req, server.build_response(ModbusRequest(1, req.function, req.address,
                                                                 req.quantity, req.values)))


@fuzz_settings(500)
@given(st.sampled_from((0x01, 0x02, 0x03, 0x04)), st.integers(-5, 0x10005), st.integers(-5, 2100))
def test_read_limits(fn: int, address: int, quantity: int) -> None:
    ok = 0 <= address and 1 <= quantity <= rtu.READ_LIMITS[fn] and address + quantity <= 0x10000
    req = ModbusRequest(1, fn, address, quantity)
    if ok:
        assert rtu.parse_request(rtu.build_request(req)) == req
    else:
        with pytest.raises(rtu.ModbusRequestError) as info:
            rtu.build_request(req)
        assert info.value.code in (rtu.ILLEGAL_DATA_ADDRESS, rtu.ILLEGAL_DATA_VALUE)
        assert isinstance(info.value, ValueError)


@fuzz_settings(500)
@given(st.integers(0, 255), st.sampled_from(rtu.FUNCTIONS), st.booleans())
def test_unit_rules(unit: int, fn: int, any_address: bool) -> None:
    req = ModbusRequest(unit, fn, 0, 1, None if fn < 5 else ([True] if fn in (5, 0x0F) else [1]),
                        0 if fn == 0x17 else None)
    ok = 1 <= unit <= 247 or (unit == 0 and fn in (5, 6, 0x0F, 0x10)) or (unit == 0xFE and any_address)
    if ok:
        assert rtu.build_request(req, any_address)[0] == unit
    else:
        with pytest.raises(rtu.ModbusRequestError):
            rtu.build_request(req, any_address)


def _with_crc(body: bytes) -> bytes:
    crc = rtu.crc16_modbus(body)
    return body + bytes((crc & 0xFF, crc >> 8))


def test_request_error_carries_what_a_server_answers() -> None:
    # 2B/0E read device identification: well formed, not supported here, so a server answers 01.
    with pytest.raises(rtu.ModbusRequestError) as info:
        rtu.parse_request(_with_crc(bytes.fromhex("07 2B 0E 01 00")))
    exc = info.value
    assert (exc.unit, exc.function, exc.code) == (7, 0x2B, rtu.ILLEGAL_FUNCTION)
    assert server.build_exception(exc.unit, exc.function, exc.code) == _with_crc(bytes.fromhex("07 AB 01"))


def test_coil_padding_bits_are_ignored() -> None:
    # Spec §6.11 says unused bits "should" be zero; a device that leaves them set still parses.
    req = rtu.parse_request(_with_crc(bytes.fromhex("11 0F 00 13 00 0A 02 CD FD")))
    assert req.values == [True, False, True, True, False, False, True, True, True, False]


# --- fuzzing ---------------------------------------------------------------------------------------

REQUEST_SEEDS = [
    bytes.fromhex(h) for h in (
        "01 03 00 00 00 0A C5 CD", "11 03 00 6B 00 03 76 87", "01 06 00 01 00 03 98 0B",
        "01 10 00 01 00 02 04 00 0A 01 02 92 30", "01 17 00 03 00 06 00 0E 00 03 06 00 FF 00 FF 00 FF 46 91",
        "FE 04 00 03 00 01 D5 C5", "FE 04 00 00 00 04 E5 C6", "FE 06 00 01 7C 06 6C C7",
    )
] + [rtu.write_multiple_coils(0x11, 0x13, [True, False] * 5), rtu.read_coils(0x11, 0x13, 19),
     rtu.write_single_coil(0x11, 0xAC, True), rtu.read_discrete_inputs(3, 0xC4, 22)]


def _pair(req_adu: bytes) -> tuple[bytes, bytes]:
    req = rtu.parse_request(req_adu)
    values = None
    if req.function in (0x01, 0x02):
        values = [i % 3 == 0 for i in range(req.quantity)]
    elif req.function in (0x03, 0x04, 0x17):
        values = [(i * 7919) & 0xFFFF for i in range(req.quantity)]
    return req_adu, server.build_response(req, values)


PAIRS = [_pair(a) for a in REQUEST_SEEDS]
RESPONSE_SEEDS = [p[1] for p in PAIRS] + [bytes.fromhex("01 83 02 C0 F1")]


@st.composite
def parser_inputs(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """(a valid request, bytes): arbitrary bytes, or a mutated request, reply or exception reply
    (often the reply to this very request, so the deep checks in parse_response get reached)."""
    request, response = draw(st.sampled_from(PAIRS))
    own = [response, server.build_exception(request[0], request[1], 2)]
    data = draw(st.one_of(st.binary(max_size=300), mutated(own), mutated(RESPONSE_SEEDS + REQUEST_SEEDS)))
    return request, data


def _fuzz_parse_request(data: bytes) -> None:
    try:
        req = rtu.parse_request(data)
    except (rtu.ModbusFrameError, rtu.ModbusRequestError) as exc:
        assert exc.offset is None or 0 <= exc.offset <= max(len(data), 0)
        return
    # Whatever parses, we build back to the same fields (and, but for 0F's padding bits, bytes).
    if data[0] <= rtu.MAX_UNIT or data[0] == rtu.ANY_ADDRESS:
        rebuilt = rtu.build_request(req, any_address=True)
        assert rtu.parse_request(rebuilt) == req
        assert rebuilt == data or req.function == rtu.WRITE_MULTIPLE_COILS


def _fuzz_parse_response(pair: tuple[bytes, bytes]) -> None:
    request, response = pair
    req = rtu.parse_request(request)
    try:
        got = rtu.parse_response(req, response)
    except rtu.ModbusException as exc:
        assert len(response) == 5 and exc.function == req.function
        return
    except rtu.ModbusFrameError:
        return
    assert len(response) == rtu.expected_response_length(req)
    if req.function in (0x01, 0x02, 0x03, 0x04, 0x17):
        assert len(got) == req.quantity


def _fuzz_parsers(pair: tuple[bytes, bytes]) -> None:
    # Both one-shot parsers see every input: the server's and the master's.
    _fuzz_parse_request(pair[1])
    _fuzz_parse_response(pair)


@fuzz_settings(DEFAULT_EXAMPLES)
@given(parser_inputs())
def test_fuzz_parse_request_and_response(pair: tuple[bytes, bytes]) -> None:
    _fuzz_parsers(pair)


@pytest.mark.long
@fuzz_settings(LONG_EXAMPLES)
@given(parser_inputs())
def test_fuzz_parse_request_and_response_long(pair: tuple[bytes, bytes]) -> None:
    _fuzz_parsers(pair)
