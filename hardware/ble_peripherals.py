"""Virtual BLE peripherals on bumble's virtual controller: the gateway's BLE code meets real GATT.

Each peripheral is a bumble `Device` with its own virtual controller on a shared `LocalLink`, so
the gateway's central (gateway.ble_bumble) scans, connects, negotiates the MTU, discovers services,
subscribes and writes over real HCI, L2CAP, ATT and GATT - only the radio is simulated.

- `NabzPeripheral` exposes the GATT table of our firmware (docs/contract.md section 1): Heart Rate
  (ECG patch) or Pulse Oximeter with PLX Features and Spot-Check (oximeter), Battery, Device
  Information, and the Nabz waveform service with its control characteristic. It is fed by the
  simulated wearables (`VirtualEcgPatch`, `VirtualOximeter`) and answers control RESEND writes from
  their resend buffer.
- Off-the-shelf style devices (a chest strap, a pulse oximeter) with standard services only are in
  `hardware.ble_standard`.
- A peripheral can leave radio range (`leave`: the link drops with a supervision timeout, as the
  central sees it, and it stops advertising) and come back (`come_back`).
- `VirtualRadio` owns the link and the event loop thread everything runs on; it advances every
  peripheral's simulation with the time that passed (`speed` times real time), and can give a
  gateway in another process an HCI controller on this link over TCP (`serve_hci`), like a USB
  dongle: `python -m hardware.ble_peripherals --patients 2 --hci-port 9000`.

Synthetic data throughout; nothing here is a recording.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from bumble import att, core, gatt, hci
from bumble.controller import Controller
from bumble.device import Connection, Device
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink
from bumble.transport.common import Transport as HciTransport

from firmware import nabz_codec as codec
from hardware.serial_sensor import stream_of
from hardware.wearables import Notification, VirtualDevice, VirtualEcgPatch

__all__ = [
    "VirtualRadio",
    "Peripheral",
    "NabzPeripheral",
    "peripheral_address",
    "characteristic",
    "device_information",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_U = core.UUID.from_16_bits
_P = gatt.Characteristic.Properties
_READABLE = gatt.Characteristic.READABLE
_WRITEABLE = gatt.Characteristic.WRITEABLE
_NONE = gatt.Characteristic.Permissions(0)
_ADV_INTERVAL_MS = 50  # short: a virtual gateway finds its devices quickly


def peripheral_address(index: int) -> str:
    """A random static address (two top bits set) for the index-th virtual peripheral."""
    return f"C0:4E:42:5A:{index >> 8 & 0xFF:02X}:{index & 0xFF:02X}"


def characteristic(
    uuid: core.UUID, props: gatt.Characteristic.Properties, value: Any = b"", perms: Any = None
) -> gatt.Characteristic[Any]:
    return gatt.Characteristic(uuid, props, perms if perms is not None else _READABLE, value)


def device_information(model: str, serial: str, firmware: str, hardware: str, maker: str) -> gatt.Service:
    """Device Information 0x180A: model 2A24, serial 2A25, firmware 2A26, hardware 2A27, maker 2A29."""
    chars = [
        characteristic(_U(0x2A24), _P.READ, model.encode()),
        characteristic(_U(0x2A25), _P.READ, serial.encode()),
        characteristic(_U(0x2A26), _P.READ, firmware.encode()),
        characteristic(_U(0x2A27), _P.READ, hardware.encode()),
        characteristic(_U(0x2A29), _P.READ, maker.encode()),
    ]
    return gatt.Service(_U(codec.UUID_DEVICE_INFORMATION), chars)


class Peripheral:
    """One virtual BLE device: a bumble host and controller on the radio's link, advertising."""

    def __init__(self, link: LocalLink, name: str, address: str, device_id: str) -> None:
        self.device_id = device_id
        self.name = name
        self.address = address
        controller = Controller(name, link=link)
        self.device = Device(
            name=name, address=hci.Address(address), host=Host(controller, AsyncPipeSink(controller))
        )
        self.device.advertising_interval_min = _ADV_INTERVAL_MS
        self.device.advertising_interval_max = _ADV_INTERVAL_MS
        self.battery = characteristic(_U(codec.UUID_BATTERY_LEVEL), _P.READ | _P.NOTIFY, bytes([100]))
        self.in_range = True
        self.connections_made = 0
        self.notifications = 0
        self.dropped = 0  # notifications the device made while nobody could hear them
        self.device.on("connection", self._on_connection)

    def services(self) -> list[gatt.Service]:
        raise NotImplementedError

    def advertised_uuids(self) -> list[core.UUID]:
        raise NotImplementedError

    async def start(self) -> None:
        self.device.add_services(self.services())
        uuids16 = b"".join(bytes(u) for u in self.advertised_uuids() if len(bytes(u)) == 2)
        uuids128 = b"".join(bytes(u) for u in self.advertised_uuids() if len(bytes(u)) == 16)
        fields: list[tuple[int, bytes]] = [
            (core.AdvertisingData.FLAGS, bytes([0x06])),
            (core.AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
        ]
        if uuids16:
            fields.append((core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS, uuids16))
        self.device.advertising_data = bytes(core.AdvertisingData(fields))
        if uuids128:  # a 128-bit UUID and a name do not fit 31 bytes together: scan response
            self.device.scan_response_data = bytes(
                core.AdvertisingData(
                    [(core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS, uuids128)]
                )
            )
        await self.device.power_on()
        await self.device.start_advertising(auto_restart=False)

    # --- radio range -------------------------------------------------------------------------
    async def leave(self) -> None:
        """Out of range: the link drops (the central sees a supervision timeout); no advertising."""
        self.in_range = False
        await self.device.stop_advertising()
        for conn in list(self.device.connections.values()):
            await conn.disconnect(reason=hci.HCI_CONNECTION_TIMEOUT_ERROR)

    async def come_back(self) -> None:
        self.in_range = True
        if not self.device.connections:
            await self.device.start_advertising(auto_restart=False)

    @property
    def connected(self) -> bool:
        return bool(self.device.connections)

    def _on_connection(self, connection: Connection) -> None:
        self.connections_made += 1
        connection.on("disconnection", lambda _reason: self._on_disconnection())

    def _on_disconnection(self) -> None:
        if self.in_range:  # dropped by the central or the link: be findable again
            asyncio.get_running_loop().create_task(self.device.start_advertising(auto_restart=False))

    # --- sending -----------------------------------------------------------------------------
    def _subscribed(self, characteristic: gatt.Characteristic[Any], bit: int) -> bool:
        """Whether a connected central has enabled notification (bit 0) or indication (bit 1) of
        `characteristic` in its CCCD: a central that has just connected has not yet, and hears
        nothing of it until it does."""
        return any(
            len(cccd := cccds.get(characteristic.handle, b"")) == 2 and cccd[0] & bit
            for cccds in self.device.gatt_server.subscribers.values()
        )

    async def notify(self, characteristic: gatt.Characteristic[Any], value: bytes) -> bool:
        """Notify `value` to the centrals subscribed to it. True if one was: what a test may count
        as heard."""
        characteristic.value = value
        if not (self.in_range and self.device.connections):
            self.dropped += 1
            return False
        heard = self._subscribed(characteristic, 0x01)
        await self.device.notify_subscribers(characteristic, value)
        self.notifications += 1
        return heard

    async def indicate(self, characteristic: gatt.Characteristic[Any], value: bytes) -> bool:
        characteristic.value = value
        if not (self.in_range and self.device.connections):
            self.dropped += 1
            return False
        heard = self._subscribed(characteristic, 0x02)
        await self.device.indicate_subscribers(characteristic, value)
        self.notifications += 1
        return heard

    async def pump(self, seconds: float) -> None:
        """Let `seconds` of device time pass: sample, notify."""
        raise NotImplementedError


class NabzPeripheral(Peripheral):
    """Our ECG patch or pulse oximeter with the firmware's GATT table, fed by a simulated wearable."""

    def __init__(self, link: LocalLink, sim: VirtualDevice, address: str) -> None:
        super().__init__(link, sim.name, address, sim.device_id)
        self.sim = sim
        ecg = isinstance(sim, VirtualEcgPatch)
        self.wave = characteristic(
            core.UUID(codec.NABZ_ECG_WAVEFORM if ecg else codec.NABZ_PPG_WAVEFORM), _P.NOTIFY, b"", _NONE
        )
        # The state the wearable says of itself (control 0x82), read from the control
        # characteristic as the firmware keeps it; tests set it.
        self.state = codec.DEVICE_STATE_OK
        self.control = characteristic(
            core.UUID(codec.NABZ_CONTROL),
            _P.READ | _P.WRITE | _P.NOTIFY,  # RESEND in; the RESEND report and device state out
            gatt.CharacteristicValue(read=self._read_control, write=self._on_control),
            _READABLE | _WRITEABLE,
        )
        self.hrm = characteristic(_U(codec.UUID_HEART_RATE_MEASUREMENT), _P.NOTIFY, b"", _NONE)
        self.plx_continuous = characteristic(_U(codec.UUID_PLX_CONTINUOUS), _P.NOTIFY, b"", _NONE)
        self.plx_spot = characteristic(_U(codec.UUID_PLX_SPOT_CHECK), _P.INDICATE, b"", _NONE)
        # PLX Features: measurement status and device & sensor status supported (bits 0, 1), then
        # the supported measurement status bits (unavailable, questionable) and sensor status bits
        # (erratic, nonpulsatile, unconnected to user) - the ones the firmware sets.
        self.plx_features = characteristic(
            _U(codec.UUID_PLX_FEATURES), _P.READ, struct.pack("<HHHB", 0x0003, 0x6000, 0x08C0, 0)
        )
        self.by_uuid: dict[str, gatt.Characteristic[Any]] = {
            codec.NABZ_ECG_WAVEFORM: self.wave,
            codec.NABZ_PPG_WAVEFORM: self.wave,
            f"{codec.UUID_HEART_RATE_MEASUREMENT:04x}": self.hrm,
            f"{codec.UUID_PLX_CONTINUOUS:04x}": self.plx_continuous,
            f"{codec.UUID_BATTERY_LEVEL:04x}": self.battery,
        }
        self.resend_requests = 0
        self.generated: Counter[str] = Counter()  # readings by stream, as docs/contract.md counts
        self.heard: Counter[str] = Counter()  # ... of which sent to a subscribed central

    @property
    def is_ecg(self) -> bool:
        return isinstance(self.sim, VirtualEcgPatch)

    def advertised_uuids(self) -> list[core.UUID]:
        main = codec.UUID_HEART_RATE_SERVICE if self.is_ecg else codec.UUID_PULSE_OXIMETER_SERVICE
        return [_U(main), core.UUID(codec.NABZ_WAVEFORM_SERVICE)]

    def services(self) -> list[gatt.Service]:
        if self.is_ecg:
            vital = gatt.Service(
                _U(codec.UUID_HEART_RATE_SERVICE),
                [
                    self.hrm,
                    characteristic(_U(codec.UUID_BODY_SENSOR_LOCATION), _P.READ, bytes([1])),
                ],  # 1: chest
            )
            model = "Nabz ECG patch"
        else:
            vital = gatt.Service(
                _U(codec.UUID_PULSE_OXIMETER_SERVICE), [self.plx_continuous, self.plx_spot, self.plx_features]
            )
            model = "Nabz pulse oximeter"
        return [
            vital,
            gatt.Service(_U(codec.UUID_BATTERY_SERVICE), [self.battery]),
            device_information(model, self.device_id, "1.0.0", "rev-b", "Nabz"),
            gatt.Service(core.UUID(codec.NABZ_WAVEFORM_SERVICE), [self.wave, self.control]),
        ]

    async def pump(self, seconds: float) -> None:
        for n in self.sim.advance(seconds):
            stream, readings = stream_of(n.char_uuid, n.data)
            self.generated[stream] += readings
            if await self.notify(self.by_uuid[n.char_uuid], n.data):
                self.heard[stream] += readings

    def _read_control(self, connection: Connection) -> bytes:
        level = self.battery.value
        return codec.control_status_encode(
            self.state, level[0] if isinstance(level, bytes | bytearray) else 100
        )

    def _on_control(self, connection: Connection, value: bytes) -> None:
        try:
            resent = self.sim.write(codec.NABZ_CONTROL, bytes(value))
        except ValueError as exc:
            raise att.ATT_Error(att.ErrorCode.VALUE_NOT_ALLOWED) from exc
        self.resend_requests += 1
        asyncio.get_running_loop().create_task(self._send_resent(resent))

    async def _send_resent(self, notes: list[Notification]) -> None:
        for n in notes:  # the frames, then the report, in order as the firmware sends them
            await self.notify(self.control if n.char_uuid == codec.NABZ_CONTROL else self.wave, n.data)


class VirtualRadio:
    """The air: a LocalLink and the event loop thread its peripherals (and an in-process gateway
    central) run on. Pumps every peripheral's simulation at `speed` times real time."""

    def __init__(self, speed: float = 1.0, tick_s: float = 0.05) -> None:
        self.speed = speed
        self.tick_s = tick_s
        self.link = LocalLink()  # type: ignore[no-untyped-call]
        self.loop = asyncio.new_event_loop()
        self.peripherals: list[Peripheral] = []
        self._hci: list[HciTransport] = []
        self._thread = threading.Thread(target=self.loop.run_forever, name="virtual-radio", daemon=True)
        self._thread.start()
        self._pump_task: asyncio.Task[None] | None = None
        self.paused = False

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the radio's loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, make: Callable[[LocalLink], Peripheral]) -> Peripheral:
        """Create a peripheral on this link (on the radio's loop) and start it advertising."""

        async def create() -> Peripheral:
            p = make(self.link)
            await p.start()
            self.peripherals.append(p)
            return p

        return self.call(create())

    def add_wearables(self, sims: Sequence[VirtualDevice], first_index: int = 0) -> list[NabzPeripheral]:
        out = []
        for i, sim in enumerate(sims, start=first_index):
            p = self.add(lambda link, sim=sim, i=i: NabzPeripheral(link, sim, peripheral_address(i)))  # type: ignore[misc]
            assert isinstance(p, NabzPeripheral)
            out.append(p)
        return out

    def start(self) -> None:
        async def begin() -> None:
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

        self.call(begin())

    def leave(self, p: Peripheral) -> None:
        self.call(p.leave())

    def come_back(self, p: Peripheral) -> None:
        self.call(p.come_back())

    async def serve_hci(self, host: str, port: int) -> None:
        """An HCI controller on this link for a host in another process (TCP, like a dongle)."""
        transport = await open_transport(f"tcp-server:{host}:{port}")
        Controller("gateway-dongle", host_source=transport.source, host_sink=transport.sink, link=self.link)
        self._hci.append(transport)

    async def _pump(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            dt, last = (now - last) * self.speed, now
            if self.paused:
                continue
            for p in self.peripherals:
                try:
                    await p.pump(dt)
                except core.BaseBumbleError as exc:  # a link that dropped mid-notification
                    log.debug("%s: %s", p.device_id, exc)

    def close(self) -> None:
        async def end() -> None:
            if self._pump_task is not None:
                self._pump_task.cancel()
            for t in self._hci:
                await t.close()

        try:
            self.call(end(), timeout=5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


def main(argv: Sequence[str] | None = None) -> int:
    from hardware import make_patients

    ap = argparse.ArgumentParser(
        description="Virtual BLE wearables on a virtual radio, for a gateway in another process."
    )
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--speed", type=float, default=1.0, help="device time per real second")
    ap.add_argument("--standard", action="store_true", help="also a standard chest strap and oximeter")
    ap.add_argument("--hci-port", type=int, default=9000, help="TCP port of the gateway's HCI controller")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    radio = VirtualRadio(speed=args.speed)
    sims = [d for p in make_patients(args.patients, args.seed) for d in p.devices]
    radio.add_wearables(sims)
    if args.standard:
        from hardware.ble_standard import HeartRateStrap, StandardOximeter

        radio.add(lambda link: HeartRateStrap(link, "strap-0001", peripheral_address(900)))
        radio.add(lambda link: StandardOximeter(link, "po60-0001", peripheral_address(901)))
    radio.call(radio.serve_hci("127.0.0.1", args.hci_port))
    radio.start()
    for p in radio.peripherals:
        print(f"{p.device_id}\t{p.address}\t{p.name}", flush=True)
    print(f"ready: HCI on tcp-client:127.0.0.1:{args.hci_port}", flush=True)
    # SIGINT or SIGTERM ends it, whatever this process inherited (a shell's background job starts
    # with SIGINT ignored, and Python keeps that: the tests' SIGINT then did nothing)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    radio.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
