"""bleak backends on bumble: the gateway's BLE code runs unchanged on bumble's host stack.

bleak talks to the operating system's Bluetooth stack (BlueZ on a Raspberry Pi). Where there is
none - this test machine, which has no radio, or a Pi that drives a USB or UART HCI controller
directly - bumble provides the host stack, and these two classes let bleak's public API
(`BleakScanner(..., backend=BumbleScanner, bumble=adapter)`, `BleakClient(device,
backend=BumbleClient, bumble=adapter)`) drive it. The HCI controller is either bumble's virtual
controller on an in-process `LocalLink` (tests), or any HCI transport bumble opens
(`tcp-client:127.0.0.1:9000` for a virtual radio in another process, `usb:0`, `serial:...`).

Rules of this file:
- Only bleak's backend interface (bleak.backends.client/scanner) and bumble's public API are used;
  everything runs on the event loop that opened the adapter.
- One `BumbleAdapter` is one controller: a central shared by all clients. Connections are made
  one at a time (bumble, like most controllers, has one pending LE connection at most).
- The ATT MTU is negotiated at connect (`mtu`, default 247), as BlueZ does by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bleak.assigned_numbers import gatt_char_props_to_strs
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from bleak.uuids import normalize_uuid_str
from bumble import core, hci
from bumble.controller import Controller
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport import open_transport
from bumble.transport.common import AsyncPipeSink
from bumble.transport.common import Transport as HciTransport

__all__ = ["BumbleAdapter", "BumbleClient", "BumbleScanner"]

log = logging.getLogger(__name__)

_CENTRAL_ADDRESS = "F0:F0:F0:F0:F0:F0"  # random static (two top bits set)


def _uuid(u: core.UUID) -> str:
    return normalize_uuid_str(u.to_hex_str("-"))


def _adv_uuids(adv: Advertisement) -> list[str]:
    out: list[str] = []
    types = (
        core.AdvertisingData.COMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        core.AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
        core.AdvertisingData.COMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
        core.AdvertisingData.INCOMPLETE_LIST_OF_128_BIT_SERVICE_CLASS_UUIDS,
    )
    for t in types:
        found = adv.data.get(t)
        if isinstance(found, list):
            out.extend(_uuid(u) for u in found)
    return out


class BumbleAdapter:
    """One bumble host + controller acting as the gateway's central."""

    def __init__(
        self, device: Device, transport: HciTransport | None = None, controller: Controller | None = None
    ) -> None:
        self.device = device
        self.transport = transport
        self.controller = controller  # set when the controller is in this process (a virtual link)
        self.connect_lock = asyncio.Lock()
        self._scanners: list[Callable[[Advertisement], None]] = []
        self._scan_refs = 0
        device.on("advertisement", self._on_advertisement)

    @classmethod
    async def open(cls, hci_spec: str | None = None, *, link: LocalLink | None = None) -> BumbleAdapter:
        """Power on a central on `link` (in-process virtual radio) or on the HCI transport `hci_spec`."""
        if link is not None:
            controller = Controller("nabz-gateway", link=link)
            host = Host(controller, AsyncPipeSink(controller))
            device = Device(name="nabz-gateway", address=hci.Address(_CENTRAL_ADDRESS), host=host)
            transport = None
            local: Controller | None = controller
        elif hci_spec:
            transport = await open_transport(hci_spec)
            device = Device.with_hci(
                "nabz-gateway", hci.Address(_CENTRAL_ADDRESS), transport.source, transport.sink
            )
            local = None
        else:
            raise BleakError("bumble: give an HCI transport (e.g. tcp-client:127.0.0.1:9000) or a link")
        await device.power_on()
        return cls(device, transport, local)

    async def cancel_connect(self) -> None:
        """Abandon a pending LE connection (after a timeout or a cancelled attempt)."""
        try:
            await self.device.cancel_connection()  # type: ignore[no-untyped-call]
        except core.BaseBumbleError as exc:
            log.debug("bumble: cancel connection: %s", exc)
        if self.controller is not None:
            # bumble's virtual controller acknowledges LE Create Connection Cancel but keeps the
            # connection pending (0.0.236), refusing every later attempt with "command
            # disallowed" until the peer advertises again. A real controller drops it.
            self.controller.pending_le_connection = None

    async def close(self) -> None:
        for conn in list(self.device.connections.values()):
            try:
                await conn.disconnect()
            except (core.BaseBumbleError, TimeoutError):
                pass
        if self.transport is not None:
            await self.transport.close()

    # --- scanning, shared by every scanner on this adapter -------------------------------------
    async def start_scanning(self, callback: Callable[[Advertisement], None]) -> None:
        self._scanners.append(callback)
        self._scan_refs += 1
        if not self.device.scanning:
            await self.device.start_scanning(filter_duplicates=False)

    async def stop_scanning(self, callback: Callable[[Advertisement], None]) -> None:
        if callback in self._scanners:
            self._scanners.remove(callback)
        if not self._scanners and self.device.scanning:
            await self.device.stop_scanning()

    def _on_advertisement(self, adv: Advertisement) -> None:
        for cb in list(self._scanners):
            cb(adv)


class BumbleScanner(BaseBleakScanner):
    """bleak scanner backend: advertisements seen by a `BumbleAdapter`."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: str = "active",
        *,
        bumble: BumbleAdapter,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.adapter = bumble

    async def start(self) -> None:
        self.seen_devices = {}
        await self.adapter.start_scanning(self._on_advertisement)

    async def stop(self) -> None:
        await self.adapter.stop_scanning(self._on_advertisement)

    def _on_advertisement(self, adv: Advertisement) -> None:
        uuids = _adv_uuids(adv)
        if not self.is_allowed_uuid(uuids):
            return
        name = adv.data.get(core.AdvertisingData.COMPLETE_LOCAL_NAME) or adv.data.get(
            core.AdvertisingData.SHORTENED_LOCAL_NAME
        )
        data = AdvertisementData(
            local_name=name if isinstance(name, str) else None,
            manufacturer_data={},
            service_data={},
            service_uuids=uuids,
            tx_power=None if adv.tx_power == adv.TX_POWER_NOT_AVAILABLE else adv.tx_power,
            rssi=adv.rssi,
            platform_data=(adv,),
        )
        address = str(adv.address).split("/")[0]
        device = self.create_or_update_device(address, address, data.local_name, adv.address, data)
        self.call_detection_callbacks(device, data)


class BumbleClient(BaseBleakClient):
    """bleak client backend: a GATT client over a bumble LE connection."""

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        bumble: BumbleAdapter,
        mtu: int = 247,
        disconnected_callback: Callable[[], None] | None = None,
        timeout: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout)
        self.adapter = bumble
        self.wanted_mtu = mtu
        self._peer_address: hci.Address | str = (
            address_or_ble_device.details
            if isinstance(address_or_ble_device, BLEDevice)
            and isinstance(address_or_ble_device.details, hci.Address)
            else self.address
        )
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._chars: dict[int, CharacteristicProxy[bytes]] = {}
        self._descs: dict[int, DescriptorProxy] = {}
        self._subscribers: dict[int, Callable[[bytes], None]] = {}

    @property
    def name(self) -> str:
        return str(self.address)

    @property
    def mtu_size(self) -> int:
        return self._connection.att_mtu if self._connection is not None else 23

    @property
    def is_connected(self) -> bool:
        return self._connection is not None and self._connection.handle in self.adapter.device.connections

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        async with self.adapter.connect_lock:
            try:
                conn = await self.adapter.device.connect(self._peer_address, timeout=self._timeout)
            except (core.BaseBumbleError, TimeoutError) as exc:
                await self.adapter.cancel_connect()
                raise BleakError(f"bumble: cannot connect to {self.address}: {exc!r}") from exc
            except asyncio.CancelledError:
                await asyncio.shield(self.adapter.cancel_connect())
                raise
        self._connection = conn
        conn.on("disconnection", self._on_disconnection)
        try:
            peer = Peer(conn)
            await peer.request_mtu(self.wanted_mtu)
            await peer.discover_services()
            services = BleakGATTServiceCollection()
            for sp in peer.services:
                await sp.discover_characteristics()
                service = BleakGATTService(sp, sp.handle, _uuid(sp.uuid))
                services.add_service(service)
                for cp in sp.characteristics:
                    await cp.discover_descriptors()
                    props = sorted(gatt_char_props_to_strs(int(cp.properties)))
                    ch = BleakGATTCharacteristic(
                        cp, cp.handle, _uuid(cp.uuid), props, lambda: self.mtu_size - 3, service
                    )
                    services.add_characteristic(ch)
                    self._chars[cp.handle] = cp
                    for dp in cp.descriptors:
                        services.add_descriptor(BleakGATTDescriptor(dp, dp.handle, _uuid(dp.type), ch))
                        self._descs[dp.handle] = dp
            self._peer = peer
            self.services = services
        except (core.BaseBumbleError, TimeoutError) as exc:
            await self.disconnect()
            raise BleakError(f"bumble: service discovery on {self.address} failed: {exc}") from exc

    async def disconnect(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None and conn.handle in self.adapter.device.connections:
            conn.remove_listener("disconnection", self._on_disconnection)
            try:
                await conn.disconnect()
            except (core.BaseBumbleError, TimeoutError) as exc:
                log.debug("bumble: disconnect from %s: %s", self.address, exc)
        self.services = None

    def _on_disconnection(self, reason: int) -> None:
        self._connection = None
        self.services = None
        if self._disconnected_callback is not None:
            self._disconnected_callback()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("pairing is not used: the wearables do not pair (docs/security.md)")

    async def unpair(self) -> None:
        raise NotImplementedError("pairing is not used")

    def _char(self, characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
        if not self.is_connected:
            raise BleakError(f"{self.address}: not connected")
        return self._chars[characteristic.handle]

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        try:
            return bytearray(await self._char(characteristic).read_value())
        except core.BaseBumbleError as exc:
            raise BleakError(f"read {characteristic.uuid}: {exc}") from exc

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        try:
            return bytearray(await self._descs[descriptor.handle].read_value())
        except core.BaseBumbleError as exc:
            raise BleakError(f"read descriptor {descriptor.uuid}: {exc}") from exc

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        try:
            await self._char(characteristic).write_value(bytes(data), with_response=response)
        except core.BaseBumbleError as exc:
            raise BleakError(f"write {characteristic.uuid}: {exc}") from exc

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        try:
            await self._descs[descriptor.handle].write_value(bytes(data), with_response=True)
        except core.BaseBumbleError as exc:
            raise BleakError(f"write descriptor {descriptor.uuid}: {exc}") from exc

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        cp = self._char(characteristic)

        def deliver(value: bytes) -> None:
            callback(bytearray(value))

        self._subscribers[characteristic.handle] = deliver
        try:
            await cp.subscribe(deliver, prefer_notify=True)
        except core.BaseBumbleError as exc:
            raise BleakError(f"subscribe {characteristic.uuid}: {exc}") from exc

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        deliver = self._subscribers.pop(characteristic.handle, None)
        if deliver is not None and self.is_connected:
            await self._char(characteristic).unsubscribe(deliver)
