"""The BLE transport: enrolled wearables through bleak's public API (BleakScanner, BleakClient).

Rules of this file:
- bleak is asyncio; the gateway is not. This transport runs its own event loop on a thread (or
  the loop it is given) and only moves bytes: notification callbacks append to a queue that
  `poll` drains on the gateway's thread, stamped with the gateway's clock when they arrived.
- Two clocks: the wall clock (`clock`) dates what goes out (notifications, link events, the
  status's `since`); the ladder's waits and durations run on the monotonic one (`mono`), so an
  NTP step of a Pi's wall clock neither reports a wearable lost (forward) nor delays a real loss
  and the retries (back) by the size of the step.
- Allowlist: only enrolled devices (by address or advertised name) are connected to. One
  scanner runs while any enrolled device is away; it pauses while a connection is being made
  (many controllers and BlueZ behave badly when scanning and connecting at once), and connection
  attempts are made one at a time.
- Each device has its own task climbing the reconnect ladder (gateway.ladder): backoff with
  jitter, a reset of the connection state (a fresh BleakClient, the cached device forgotten until
  a new advertisement, the scanner restarted), then "lost" - while it keeps trying, forever. The
  task ticks the ladder while a link is up too, until the link is stable (a link that drops
  sooner is a flap, not a return).
- On every connection: MTU (negotiated by the stack; the bumble backend asks for `mtu`), service
  discovery, reads of Device Information, Battery Level, Body Sensor Location and PLX Features,
  subscriptions to every characteristic the decoder knows (notify or indicate), then a read of
  the control characteristic where it is readable (the wearable's status: what it notified on
  connection was sent before the subscriptions and lost).
- `backend="bleak"` is the operating system's stack (BlueZ on the Pi); `backend="bumble"` runs
  bumble's host on an HCI transport (`hci`) or an in-process virtual link (`link`, tests).
- The radio itself may be missing (BlueZ not up yet at boot, a dongle unplugged): opening it is
  retried with backoff for as long as it takes, and a bumble HCI transport that dies is reopened
  at the ladder's reset rung. The devices' ladders run meanwhile, so they are reported lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from firmware import nabz_codec as codec
from gateway.decode import Notification, normalize_uuid
from gateway.ladder import Action, Ladder
from gateway.transport import LinkEvent, LinkHealth, Transport, TransportError
from nabz.config import EnrolledDevice
from nabz.mqtt import Backoff

__all__ = ["BleTransport"]

log = logging.getLogger(__name__)

# What the decoder knows, and so what we subscribe to.
SUBSCRIBE = {
    f"{codec.UUID_HEART_RATE_MEASUREMENT:04x}",
    f"{codec.UUID_PLX_CONTINUOUS:04x}",
    f"{codec.UUID_PLX_SPOT_CHECK:04x}",
    f"{codec.UUID_BATTERY_LEVEL:04x}",
    codec.NABZ_ECG_WAVEFORM,
    codec.NABZ_PPG_WAVEFORM,
    codec.NABZ_CONTROL,  # the device's RESEND reports and state changes
}
_INFO = {
    "2a24": "model",
    "2a25": "serial",
    "2a26": "firmware",
    "2a27": "hardware",
    "2a29": "manufacturer",
    "2a38": "body_sensor_location",
    "2a60": "plx_features",
}
_TEXT = {"2a24", "2a25", "2a26", "2a27", "2a29"}  # UTF-8 strings; the others are shown in hex
_BATTERY = f"{codec.UUID_BATTERY_LEVEL:04x}"
_FAILURES = (BleakError, TimeoutError, OSError, EOFError)
_FRESH_S = 1.0  # an advertisement older than this does not count as "in range now"


@dataclass
class _Device:
    cfg: EnrolledDevice
    ladder: Ladder
    ble_device: BLEDevice | None = None
    seen_at: float = float("-inf")  # monotonic time of the latest advertisement
    rssi: int | None = None
    client: BleakClient | None = None
    mtu: int | None = None
    info: dict[str, str] = field(default_factory=dict)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    gone: asyncio.Event = field(default_factory=asyncio.Event)
    subscribed: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.cfg.id

    def matches(self, device: BLEDevice, adv: AdvertisementData) -> bool:
        if self.cfg.address and device.address.upper() == self.cfg.address.upper():
            return True
        name = adv.local_name or device.name
        return bool(self.cfg.name and name == self.cfg.name)


class BleTransport(Transport):
    """Enrolled BLE wearables, several at once, through bleak."""

    def __init__(
        self,
        devices: Sequence[EnrolledDevice],
        *,
        backend: str = "bleak",
        hci: str | None = None,
        link: Any = None,
        mtu: int = 247,
        connect_timeout_s: float = 20.0,
        retry_min_s: float = 1.0,
        retry_max_s: float = 30.0,
        reset_after_failures: int = 3,
        lost_after_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """`clock` is the wall clock (timestamps); `monotonic` measures the ladder's durations
        (default: time.monotonic, or `clock` itself when a simulated one is given)."""
        if not devices:
            raise TransportError(
                "BLE transport: no enrolled devices ([[gateway.devices]] in the configuration)"
            )
        for d in devices:
            if not (d.address or d.name):
                raise TransportError(f"BLE transport: device {d.id} needs an address or a name")
        if backend not in ("bleak", "bumble"):
            raise TransportError(f"BLE transport: unknown backend {backend!r} (bleak or bumble)")
        self.backend = backend
        self.hci = hci
        self.link = link
        self.mtu = mtu
        self.connect_timeout_s = connect_timeout_s
        self.clock = clock
        self.mono: Callable[[], float] = monotonic or (time.monotonic if clock is time.time else clock)
        self._enrolled = list(devices)
        self._ladder_args = dict(
            min_s=retry_min_s, max_s=retry_max_s, reset_after=reset_after_failures, lost_after_s=lost_after_s
        )
        self._rand = rand
        self._own_loop = loop is None
        self.loop = loop or asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._queue: deque[Notification] = deque()
        self._events: list[LinkEvent] = []
        self._events_lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._adapter: Any = None
        self._scanner: BleakScanner | None = None
        self._scanning = False
        self._connect_lock: asyncio.Lock | None = None
        self._radio_ready: asyncio.Event | None = None
        self._radio_error = "opening"
        self._reopening: asyncio.Task[None] | None = None
        self._radio_backoff = Backoff(retry_min_s, retry_max_s, rand)

    # --- Transport (gateway thread) -----------------------------------------------------------
    @property
    def devices(self) -> list[str]:
        return [d.id for d in self._enrolled]

    def start(self, now_us: int) -> None:
        if self._own_loop:
            self._thread = threading.Thread(target=self.loop.run_forever, name="nabz-ble", daemon=True)
            self._thread.start()
        asyncio.run_coroutine_threadsafe(self._main(), self.loop)

    def stop(self) -> None:
        if self.loop.is_closed() or not self.loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(15)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("BLE: shutdown did not finish cleanly: %s", exc)
        if self._own_loop:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if self._thread is not None:
                self._thread.join(5)

    def poll(self, now_us: int) -> list[Notification]:
        out: list[Notification] = []
        q = self._queue
        while q:
            out.append(q.popleft())
        return out

    def write(self, device: str, char: str, data: bytes) -> bool:
        dev = self._devices.get(device)
        client = dev.client if dev is not None else None
        if client is None or not client.is_connected:
            return False
        asyncio.run_coroutine_threadsafe(self._write(device, client, char, data), self.loop)
        return True

    def health(self, now_us: int) -> dict[str, LinkHealth]:
        out: dict[str, LinkHealth] = {}
        for cfg in self._enrolled:
            dev = self._devices.get(cfg.id)
            if dev is None:
                out[cfg.id] = LinkHealth("connecting")
                continue
            lad = dev.ladder
            out[cfg.id] = LinkHealth(
                lad.link_state,
                since_us=int(lad.since * 1_000_000),
                rssi_dbm=dev.rssi,
                mtu=dev.mtu,
                reconnects=lad.reconnects,
                reason=lad.last_reason,
            )
        return out

    def take_events(self) -> list[LinkEvent]:
        with self._events_lock:
            out, self._events = self._events, []
        return out

    def device_info(self, device: str) -> dict[str, str]:
        """What the device said about itself (Device Information and friends) when last connected."""
        dev = self._devices.get(device)
        return dict(dev.info) if dev is not None else {}

    # --- the event loop ------------------------------------------------------------------------
    async def _main(self) -> None:
        self._connect_lock = asyncio.Lock()
        self._radio_ready = asyncio.Event()
        now, wall = self._now()
        for cfg in self._enrolled:
            ladder = Ladder(now, rand=self._rand, wall=wall, **self._ladder_args)  # type: ignore[arg-type]
            self._devices[cfg.id] = _Device(cfg, ladder)
        self._tasks = [asyncio.create_task(self._run_device(d)) for d in self._devices.values()]
        self._reopening = asyncio.create_task(self._open_radio())

    async def _open_radio(self) -> None:
        """Open the adapter (bumble) and start scanning; retry with backoff until it works."""
        assert self._radio_ready is not None
        self._radio_ready.clear()
        failures = 0
        while True:
            try:
                if self.backend == "bumble":
                    from gateway.ble_bumble import BumbleAdapter

                    if self._adapter is not None:
                        await self._adapter.close()
                    self._adapter = await BumbleAdapter.open(self.hci, link=self.link)
                self._scanner = BleakScanner(self._on_advertisement, **self._backend_kwargs(scanner=True))
                self._scanning = False
                await self._scanner.start()
                self._scanning = True
            except Exception as exc:  # whatever the stack says, the answer is: try again later
                failures += 1
                self._radio_error = f"Bluetooth adapter not available: {exc or type(exc).__name__}"
                delay = self._radio_backoff.delay(failures)
                log.error("BLE: %s (%s backend); retrying in %.1f s", self._radio_error, self.backend, delay)
                await asyncio.sleep(delay)
                continue
            self._radio_error = ""
            self._radio_ready.set()
            log.info("BLE: radio ready (%s backend%s)", self.backend, f", {self.hci}" if self.hci else "")
            return

    def _radio_dead(self) -> bool:
        transport = getattr(self._adapter, "transport", None)
        return transport is not None and transport.source.terminated.done()

    def _backend_kwargs(self, scanner: bool = False) -> dict[str, Any]:
        if self.backend != "bumble":
            return {}
        from gateway.ble_bumble import BumbleClient, BumbleScanner

        if scanner:
            return {"backend": BumbleScanner, "bumble": self._adapter}
        return {"backend": BumbleClient, "bumble": self._adapter, "mtu": self.mtu}

    async def _shutdown(self) -> None:
        tasks = [*self._tasks, *([self._reopening] if self._reopening is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for dev in self._devices.values():
            if dev.client is not None:
                try:
                    await dev.client.disconnect()
                except _FAILURES:
                    pass
        await self._scan(False)
        if self._adapter is not None:
            await self._adapter.close()

    async def _scan(self, on: bool) -> None:
        if self._scanner is None or on == self._scanning:
            return
        try:
            await (self._scanner.start() if on else self._scanner.stop())
            self._scanning = on
        except _FAILURES as exc:
            log.warning("BLE: cannot %s scanning: %s", "start" if on else "stop", exc)

    def _on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        for dev in self._devices.values():
            if dev.matches(device, adv):
                dev.ble_device = device
                dev.rssi = adv.rssi
                dev.seen_at = time.monotonic()
                dev.seen.set()

    async def _run_device(self, dev: _Device) -> None:
        """The device's life, for as long as the transport runs: whatever goes wrong in one round
        (an error from the BLE stack of a kind not foreseen) is logged and the ladder goes on, so
        the device is still retried and reported lost; the task never ends silently."""
        while True:
            try:
                await self._round(dev)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log.exception("BLE: %s: unexpected error; retrying", dev.id)
                try:
                    await self._recover(dev, f"{type(exc).__name__}: {exc}")
                except Exception:  # noqa: BLE001 - the ladder is told next round; the task lives on
                    log.exception("BLE: %s: could not set its state after the error", dev.id)
                await asyncio.sleep(0.5)

    async def _recover(self, dev: _Device, why: str) -> None:
        """After an unexpected error in a round: the ladder moved on by the state it is in (an
        attempt failed; a link is down; otherwise it simply waits for its next attempt)."""
        if dev.client is not None:  # a link that may still be up: closed, not left behind
            with contextlib.suppress(Exception):
                await asyncio.wait_for(dev.client.disconnect(), 10)
        dev.client = None
        now, wall = self._now()
        if dev.ladder.state == "connecting" and dev.ladder.attempting:
            await self._act(dev, dev.ladder.on_failed(now, why, wall), wall)
        elif dev.ladder.state == "connected":
            await self._act(dev, dev.ladder.on_disconnected(now, why, wall), wall)
            self._event(dev.id, "disconnected", wall, why)

    async def _round(self, dev: _Device) -> None:
        """Wait for the next attempt, connect, and stay until the link is lost."""
        now, wall = self._now()
        await self._act(dev, dev.ladder.tick(now, wall), wall)
        if not dev.ladder.attempt_due(now):
            await asyncio.sleep(min(0.5, max(0.02, dev.ladder.next_attempt - now)))
            return
        dev.ladder.on_attempt(now, wall)
        failure = await self._attempt(dev)
        now, wall = self._now()
        if failure is not None:
            log.info("BLE: %s: connection attempt failed: %s", dev.id, failure)
            await self._act(dev, dev.ladder.on_failed(now, failure, wall), wall)
            return
        await self._act(dev, dev.ladder.on_connected(now, wall), wall)
        self._event(dev.id, "connected", wall, f"MTU {dev.mtu}")
        log.info(
            "BLE: %s connected (%s, firmware %s), MTU %s, subscribed to %s",
            dev.id,
            dev.info.get("model", "?"),
            dev.info.get("firmware", "?"),
            dev.mtu,
            ", ".join(dev.subscribed),
        )
        while (stable_at := dev.ladder.stable_at()) is not None and not dev.gone.is_set():
            # The link becomes stable (the device counts as back, found if it was lost) only by
            # staying up: tell the ladder when that time comes, unless the link drops first.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dev.gone.wait(), min(1.0, max(0.02, stable_at - self.mono())))
            now, wall = self._now()
            await self._act(dev, dev.ladder.tick(now, wall), wall)
        await dev.gone.wait()
        now, wall = self._now()
        dev.client = None
        await self._act(dev, dev.ladder.on_disconnected(now, "link lost", wall), wall)
        self._event(dev.id, "disconnected", wall, "link lost")
        log.warning("BLE: %s disconnected; reconnecting", dev.id)
        await self._scan(True)

    async def _attempt(self, dev: _Device) -> str | None:
        """One connection attempt: wait for an advertisement, connect, set up. None if it worked.

        Only a device heard advertising a moment ago is connected to: paging one that is out of
        range only ties up the controller's single pending connection until the timeout."""
        assert self._radio_ready is not None
        if not self._radio_ready.is_set():
            try:
                await asyncio.wait_for(self._radio_ready.wait(), self.connect_timeout_s)
            except TimeoutError:
                return self._radio_error
        if dev.ble_device is None or time.monotonic() - dev.seen_at > _FRESH_S:
            await self._scan(True)
            dev.seen.clear()
            try:
                await asyncio.wait_for(dev.seen.wait(), self.connect_timeout_s)
            except TimeoutError:
                return "not advertising (out of range or switched off)"
        assert dev.ble_device is not None and self._connect_lock is not None
        dev.gone = asyncio.Event()
        gone = dev.gone

        def on_disconnect(_client: BleakClient) -> None:
            gone.set()

        client = BleakClient(
            dev.ble_device,
            disconnected_callback=on_disconnect,
            timeout=self.connect_timeout_s,
            **self._backend_kwargs(),
        )
        try:
            async with self._connect_lock:
                await self._scan(False)
                try:
                    # The stack times the connection out itself (`timeout`); this bounds discovery too.
                    await asyncio.wait_for(client.connect(), 2 * self.connect_timeout_s + 10)
                finally:
                    if any(d.client is None and d is not dev for d in self._devices.values()):
                        await self._scan(True)
            await self._setup(dev, client)
        except Exception as exc:  # noqa: BLE001 - a failed attempt, whatever the stack raised
            if not isinstance(exc, _FAILURES):  # not one the stack documents: keep its traceback
                log.warning("BLE: %s: unexpected error while connecting", dev.id, exc_info=True)
            try:
                await client.disconnect()
            except Exception:  # noqa: BLE001 - already failing; the attempt's error is what counts
                pass
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if gone.is_set():
            return "dropped during setup"
        dev.client = client
        if all(d.client is not None for d in self._devices.values()):
            await self._scan(False)
        return None

    async def _setup(self, dev: _Device, client: BleakClient) -> None:
        dev.mtu = client.mtu_size
        dev.subscribed = []
        for char in client.services.characteristics.values():
            uuid = normalize_uuid(char.uuid)
            if uuid in _INFO and "read" in char.properties:
                value = bytes(await client.read_gatt_char(char))
                dev.info[_INFO[uuid]] = value.decode("utf-8", "replace") if uuid in _TEXT else value.hex()
        for char in client.services.characteristics.values():
            uuid = normalize_uuid(char.uuid)
            if uuid == _BATTERY and "read" in char.properties:
                # The level now, not in a minute: the gateway's status carries it.
                value = bytes(await client.read_gatt_char(char))
                self._queue.append(Notification(dev.id, uuid, value, *self._stamp()))
            if uuid in SUBSCRIBE and ("notify" in char.properties or "indicate" in char.properties):
                await client.start_notify(char, self._deliver(dev.id, uuid))
                dev.subscribed.append(uuid)
        for char in client.services.characteristics.values():
            if normalize_uuid(char.uuid) == codec.NABZ_CONTROL and "read" in char.properties:
                # The wearable's state now, read once subscribed: the status it notified on
                # connection went out before the subscription and was lost (Nabz firmware keeps
                # its current status as the value; a device whose value is something else - a
                # RESEND just written - says its state later, on the next notification).
                value = bytes(await client.read_gatt_char(char))
                if value[:1] == bytes((codec.CTRL_OP_STATUS,)):
                    self._queue.append(Notification(dev.id, codec.NABZ_CONTROL, value, *self._stamp()))

    def _deliver(self, device: str, uuid: str) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        queue, stamp = self._queue, self._stamp

        def on_notify(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            queue.append(Notification(device, uuid, bytes(data), *stamp()))

        return on_notify

    def _stamp(self) -> tuple[int, int | None]:
        """A notification's receive time on the wall clock (µs) and, when the monotonic clock is
        another, on that one too: the decoder sees a step of the wall clock between the two."""
        rx_us = int(self.clock() * 1_000_000)
        return rx_us, None if self.mono is self.clock else int(self.mono() * 1_000_000)

    async def _write(self, device: str, client: BleakClient, char: str, data: bytes) -> None:
        try:
            await client.write_gatt_char(char, data, response=True)
        except _FAILURES as exc:
            log.warning("BLE: %s: write to %s failed: %s", device, char, exc)

    def _now(self) -> tuple[float, float]:
        """(monotonic, wall): the first for the ladder's durations, the second for what is reported."""
        return self.mono(), self.clock()

    async def _act(self, dev: _Device, actions: list[Action], wall: float) -> None:
        for action in actions:
            if action == "reset":
                # Start over: a new client next time, the device must be seen advertising again,
                # and a new scanner (the stack's cache of what it saw is dropped with the old one).
                dev.ble_device = None
                dev.client = None
                if self._radio_dead() and (self._reopening is None or self._reopening.done()):
                    log.error("BLE: the HCI transport %s is gone; reopening it", self.hci)
                    self._reopening = asyncio.create_task(self._open_radio())
                elif self._radio_ready is not None and self._radio_ready.is_set():
                    await self._scan(False)
                    self._scanner = BleakScanner(self._on_advertisement, **self._backend_kwargs(scanner=True))
                    await self._scan(True)
                log.warning(
                    "BLE: %s: %d failed attempts; reset its connection state", dev.id, dev.ladder.failures
                )
            elif action == "report_lost":
                self._event(dev.id, "lost", wall, dev.ladder.last_reason)
            elif action == "report_found":
                self._event(dev.id, "found", wall)

    def _event(self, device: str, kind: str, wall: float, detail: str = "") -> None:
        with self._events_lock:
            self._events.append(LinkEvent(device, kind, int(wall * 1_000_000), detail))  # type: ignore[arg-type]
