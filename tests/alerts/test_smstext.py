"""SMS texts: GSM-7 or UCS-2, within one message or split properly, priority first."""

from __future__ import annotations

from alerts.smstext import Line, compose, encoding_of, gsm7_decode, gsm7_encode, split
from tests.alerts.helpers import T0


def line(
    kind: str = "spo2_low", priority: str = "high", message: str = "SpO2 84% (<88%) for 12 s", **kw: object
) -> Line:
    return Line(kw.pop("label", "p-0002"), kind, priority, message, T0 + 5, kw.pop("code", "4821"),  # type: ignore[arg-type]
                kw.pop("reason", "new"), kw.pop("value", 84.0), kw.pop("unit", "%"))  # type: ignore[arg-type]  # fmt: skip


def test_one_alarm_fits_one_gsm7_sms_with_priority_patient_value_local_time_and_code() -> None:
    text = compose([line()])
    assert text == "NABZ HIGH p-0002: SpO2 84% (<88%) for 12 s, since 14:00 PKT. ACK 4821"
    assert split(text) == ("gsm7", [text])


def test_several_alarms_highest_priority_first_each_with_its_own_code() -> None:
    text = compose([line("battery_low", "low", "battery 19% (<20%)", code="1111"),
                    line(), line("hr_high", "medium", "HR 140/min (>130/min) for 10 s", code="2222")])  # fmt: skip
    assert text.startswith("NABZ HIGH p-0002: SpO2 84%")
    assert text.index("ACK 4821") < text.index("MEDIUM HR 140") < text.index("LOW battery")
    enc, parts = split(text)
    assert enc == "gsm7" and len(parts) == 2 and all(len(p) <= 160 for p in parts)
    assert parts[0].endswith("(1/2)") and parts[1].endswith("(2/2)")
    assert " ".join(p.rsplit(" ", 1)[0] for p in parts) == text


def test_urdu_is_ucs2_short_and_keeps_the_reply_in_latin_script() -> None:
    text = compose([line()], language="ur")
    assert encoding_of(text) == "ucs2" and len(text) <= 70
    assert "آکسیجن کم 84%" in text and text.endswith("ACK 4821")
    long = compose(
        [line(), line("hr_high", "medium", "HR", code="2222", value=140.0, unit="/min")], language="ur"
    )
    enc, parts = split(long)
    assert enc == "ucs2" and len(parts) == 2 and all(len(p) <= 70 for p in parts)


def test_extension_characters_force_ucs2_and_gsm7_round_trips() -> None:
    assert encoding_of("Bed [3]") == "ucs2" and encoding_of("Bed 3 @ £5") == "gsm7"
    assert gsm7_decode(gsm7_encode("NABZ @ 5% £ ok")) == "NABZ @ 5% £ ok"


def test_the_uncalibrated_ppg_estimate_is_named_so_in_either_language() -> None:
    estimate = line(message="SpO2 84% (uncalibrated PPG) (<88%) for 12 s")
    assert "SpO2 84% (uncalibrated PPG)" in compose([estimate])
    urdu = compose([estimate], language="ur")
    assert "غیر کیلیبریٹڈ" in urdu and len(split(urdu)[1]) == 1  # still one SMS
    assert "کیلیبریٹڈ" not in compose([line()], language="ur")  # the oximeter's own reading
