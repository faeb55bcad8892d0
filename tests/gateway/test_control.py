"""The wearable's side of the control characteristic as the gateway hears it: a state report
reaches the gateway's status (and so the alerts service), a malformed one is dead-lettered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from firmware import nabz_codec as codec
from gateway.service import Gateway
from gateway.virtual import VirtualTransport
from hardware import make_patients
from nabz.config import Config, GatewayConfig, MqttConfig


class _Saying:
    """A simulated wearable that also says `lines` on its control characteristic, one per advance."""

    def __init__(self, inner: Any, lines: list[bytes]) -> None:
        self.inner, self.lines = inner, list(lines)

    def __getattr__(self, name: str) -> Any:  # device_id, readings_generated, write, ...: the wearable's
        return getattr(self.inner, name)

    def advance(self, seconds: float) -> list[Any]:
        out = list(self.inner.advance(seconds))
        if self.lines:
            out.append(
                type(out[0])(
                    self.inner.device_id, codec.NABZ_CONTROL, self.lines.pop(0), self.inner.device_t_us
                )
            )
        return out


def test_a_state_report_reaches_the_status_and_a_bad_one_is_kept_with_its_reason(tmp_path: Path) -> None:
    ecg, oxi = make_patients(1, seed=3)[0].devices
    said = _Saying(
        oxi, [codec.control_status_encode(3, 64), b"\x82\x09\x40", codec.control_status_encode(0, 63)]
    )
    now = [1_795_597_200.0]
    cfg = Config(
        site="demo", mqtt=MqttConfig(url="mqtt://127.0.0.1:9"),
        gateway=GatewayConfig(id="gw-0001", spool_path=str(tmp_path / "spool.sqlite")),
    )  # fmt: skip
    gw = Gateway(cfg, VirtualTransport([ecg, said]), clock=lambda: now[0])
    gw.transport.start(int(now[0] * 1e6))

    def step() -> dict[str, Any]:
        now[0] += 1.0
        gw.step()
        return {h.device: h for h in gw.status().health}

    health = step()
    assert health[oxi.device_id].device_state == "sensor_fault" and health[oxi.device_id].battery_pct == 64
    assert health[ecg.device_id].device_state is None  # it has said nothing of itself
    health = step()  # an unknown state: not believed, kept
    assert health[oxi.device_id].device_state == "sensor_fault"
    assert gw.spool.counter("dead_letters") == 1
    health = step()
    assert health[oxi.device_id].device_state == "ok" and health[oxi.device_id].battery_pct == 63
    gw.spool.close()
