# Fake `bluetooth` module (MicroPython 1.27 low-level BLE API, as the ESP32/NimBLE port behaves)
# for the interpreter tests: a GATT server whose handles are numbered like NimBLE's, notifications
# recorded per handle, a stack that runs out of buffers (OSError ENOMEM) when told to, and the IRQ
# events a central causes (connect, MTU exchange, writes, disconnect), raised by the test.
# Subscriptions: the port sends a notification whether or not the central subscribed (the
# MicroPython docs say so for gatts_notify), but a central that has not written the CCCD yet
# drops it - BlueZ hands it to nobody. The model records only what a subscribed central hears;
# the rest is counted in `unheard`.

FLAG_READ = 0x0002
FLAG_WRITE_NO_RESPONSE = 0x0004
FLAG_WRITE = 0x0008
FLAG_NOTIFY = 0x0010
FLAG_INDICATE = 0x0020

_IRQ_CENTRAL_CONNECT = 1
_IRQ_CENTRAL_DISCONNECT = 2
_IRQ_GATTS_WRITE = 3
_IRQ_MTU_EXCHANGED = 21

_ENOMEM = 12
_ENOTCONN = 128


class UUID:
    def __init__(self, value):
        if isinstance(value, int):
            self.value = "%04x" % value
        else:
            self.value = value.lower()

    def __eq__(self, other):
        return isinstance(other, UUID) and other.value == self.value

    def __repr__(self):
        return "UUID(%s)" % self.value


_instance = None


class BLE:
    def __new__(cls):
        # bluetooth.BLE() is a singleton on the device.
        global _instance
        if _instance is None:
            _instance = object.__new__(cls)
            _instance._init()
        return _instance

    def __init__(self):
        pass

    def _init(self):
        self._active = False
        self._config = {"mtu": 23, "gap_name": "MPY ESP32"}
        self._irq = None
        self.values = {}  # handle -> bytes
        self.buffers = {}  # handle -> max write size
        self.chars = {}  # handle -> (uuid string, flags)
        self.notified = []  # (conn, handle, bytes) the central heard (it had subscribed)
        self.subscribed = set()  # handles whose CCCD the central wrote (this connection)
        self.unheard = 0  # notifications sent before the central subscribed: lost
        self.room = None  # notifications the stack takes before ENOMEM (None: unlimited)
        self.refused = 0
        self.adv = None  # (interval_us, adv_data, resp_data, connectable)
        self.adv_history = []
        self.connected = None
        self.mtu_requests = 0
        self.disconnect_requests = 0
        self._next = 1

    @staticmethod
    def reset():
        global _instance
        _instance = None

    # -- the API the firmware calls ---------------------------------------------------------------
    def active(self, on=None):
        if on is not None:
            self._active = bool(on)
        return self._active

    def config(self, *args, **kwargs):
        if args:
            return self._config[args[0]]
        self._config.update(kwargs)
        return None

    def irq(self, handler):
        self._irq = handler

    def gatts_register_services(self, services):
        out = []
        for _svc, chars in services:
            self._next += 1  # the service declaration
            handles = []
            for char in chars:
                uuid, flags = char[0], char[1]
                self._next += 1  # the characteristic declaration
                h = self._next
                self._next += 1
                self.chars[h] = (uuid.value, flags)
                self.values[h] = b""
                self.buffers[h] = 20
                if flags & (FLAG_NOTIFY | FLAG_INDICATE):
                    self._next += 1  # the CCCD
                handles.append(h)
            out.append(tuple(handles))
        return tuple(out)

    def gatts_write(self, handle, data, send_update=False):
        self.values[handle] = bytes(data)

    def gatts_read(self, handle):
        return self.values[handle]

    def gatts_set_buffer(self, handle, size, append=False):
        self.buffers[handle] = size

    def gatts_notify(self, conn, handle, data=None):
        if conn != self.connected:
            raise OSError(_ENOTCONN)
        if self.room is not None:
            if self.room <= 0:
                self.refused += 1
                raise OSError(_ENOMEM)
            self.room -= 1
        payload = bytes(data if data is not None else self.values[handle])
        mtu = self._config.get("_link_mtu", 23)
        if len(payload) > mtu - 3:
            raise AssertionError("notification of %d bytes on a link with MTU %d" % (len(payload), mtu))
        if handle not in self.subscribed:
            self.unheard += 1
            return
        self.notified.append((conn, handle, payload))

    def gap_advertise(self, interval_us, adv_data=None, resp_data=None, connectable=True):
        self.adv = None if interval_us is None else (interval_us, adv_data, resp_data, connectable)
        self.adv_history.append(self.adv)

    def gattc_exchange_mtu(self, conn):
        self.mtu_requests += 1

    def gap_disconnect(self, conn):
        self.disconnect_requests += 1
        return True

    # -- what a central does (tests) ----------------------------------------------------------------
    def central_connect(self, conn=64):
        self.connected = conn
        self.subscribed = set()
        self._config["_link_mtu"] = 23
        self.adv = None
        self._irq(_IRQ_CENTRAL_CONNECT, (conn, 0, b"\xaa\xbb\xcc\xdd\xee\xff"))

    def central_mtu(self, mtu):
        self._config["_link_mtu"] = min(mtu, self._config["mtu"])
        self._irq(_IRQ_MTU_EXCHANGED, (self.connected, self._config["_link_mtu"]))

    def central_subscribe(self, handles=None):
        """The central writes the CCCDs (of every notify/indicate characteristic by default)."""
        if handles is None:
            handles = [h for h, (_, f) in self.chars.items() if f & (FLAG_NOTIFY | FLAG_INDICATE)]
        self.subscribed.update(handles)

    def central_read(self, handle):
        """A read by the central: the value the server holds (it must be readable)."""
        if not self.chars[handle][1] & FLAG_READ:
            raise AssertionError("read of a characteristic without the read property")
        return self.values[handle]

    def central_write(self, handle, data):
        if len(data) > self.buffers[handle]:
            raise AssertionError("write of %d bytes to a %d-byte buffer" % (len(data), self.buffers[handle]))
        self.values[handle] = bytes(data)
        self._irq(_IRQ_GATTS_WRITE, (self.connected, handle))

    def central_disconnect(self):
        conn = self.connected
        self.connected = None
        self._irq(_IRQ_CENTRAL_DISCONNECT, (conn, 0, b"\xaa\xbb\xcc\xdd\xee\xff"))

    def take(self):
        out = self.notified
        self.notified = []
        return out

    def handle_of(self, uuid):
        u = "%04x" % uuid if isinstance(uuid, int) else uuid.lower()
        for h, (v, _) in self.chars.items():
            if v == u:
                return h
        raise KeyError(uuid)
