# A fake BLE link for the sender: records every notification, and can run out of buffers the way
# NimBLE does (notify fails until the stack has sent what it holds).


class FakeLink:
    def __init__(self, mtu=247, room=None):
        self.mtu = mtu
        self.room = room  # notifications accepted before the stack is "full" (None: unlimited)
        self.sent = []  # (char, bytes)
        self.refused = 0

    def notify(self, char, data):
        if self.room is not None:
            if self.room <= 0:
                self.refused += 1
                return False
            self.room -= 1
        self.sent.append((char, bytes(data)))
        return True

    def drain(self, room):
        """The radio sent what it held: room for `room` more notifications."""
        self.room = room

    def take(self):
        out = self.sent
        self.sent = []
        return out
