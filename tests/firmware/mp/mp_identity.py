# The same patient through the real firmware: samples the virtual wearables (hardware/) rendered are
# played into the fake ADC/leads-off pins and the fake MAX30102, and every waveform notification
# the firmware sends is emitted as hex, for the CPython side to compare with what the virtual
# wearable sent for the same samples.
import sys
from array import array

import fake_rig
from fake_rig import Rig
from mptest import emit, hexs

SENSOR = sys.argv[1]
BOOT_US = int(sys.argv[2])
SECONDS = int(sys.argv[3])

if SENSOR == "ecg":
    fake_rig.ECG = array("h", open("/id/samples.bin", "rb").read())
    flags = bytearray(open("/id/flags.bin", "rb").read())
    # The sampler's first sample is one period after it starts: start 4 ms before the virtual t0.
    rig = Rig("ecg", start_us=BOOT_US - 4000, ecg_flags=flags, connect_first=True)
else:
    fake_rig.PPG = array("i", open("/id/samples.bin", "rb").read())
    rig = Rig("oximeter", start_us=BOOT_US - 10000, connect_first=True)
# The virtual wearables number from 0; a board from a random start at each boot (the only
# difference in the bytes by design): this one from 0 too.
rig.w.ring.seq_start = 0
rig.run(SECONDS)
emit("frames", [hexs(data) for data in rig.gw.raw_frames])
emit("vitals", rig.gw.vitals)
