# Heap held by a wearable, measured by the runner's --mem-report once this script has returned
# (the WebAssembly port frees nothing while a script runs). Phases, by the first argument:
#   base      the fake hardware modules only
#   imports   + every firmware module (bytecode loaded from .py, as on a board without freezing)
#   rig       + the test rig's own code
#   ecg | oximeter   + a wearable built and run for 30 s with a gateway connected at MTU 247
import sys

import bluetooth  # noqa: F401
import fake_clock  # noqa: F401
import fake_max30102  # noqa: F401
import machine  # noqa: F401
import mptest  # noqa: F401

PHASE = sys.argv[1]
if PHASE != "base":
    import max30102  # noqa: F401
    import nabz_app  # noqa: F401
    import nabz_battery  # noqa: F401
    import nabz_ble  # noqa: F401
    import nabz_board  # noqa: F401
    import nabz_clock  # noqa: F401
    import nabz_codec  # noqa: F401
    import nabz_config  # noqa: F401
    import nabz_ecg  # noqa: F401
    import nabz_main  # noqa: F401
    import nabz_ppg  # noqa: F401
    import nabz_qrs  # noqa: F401
    import nabz_ring  # noqa: F401
    import nabz_spo2  # noqa: F401
    import nabz_stream  # noqa: F401
if PHASE in ("rig", "ecg", "oximeter"):
    import fake_rig
if PHASE in ("ecg", "oximeter"):
    fake_rig.use_data()
    rig = fake_rig.Rig(PHASE)
    rig.connect()
    rig.run(30)
    frames = len(rig.gw.frames)
    rig.forget()
    print("frames %d ring %d bytes" % (frames, len(rig.w.ring.data)))
