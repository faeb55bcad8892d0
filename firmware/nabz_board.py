# The real board: machine and bluetooth objects made from the device configuration, handed to the
# wearable. The only firmware module besides nabz_main that touches pins by number.

import binascii

import bluetooth
import machine
from nabz_app import FIRMWARE_REV, EcgWearable, OximeterWearable
from nabz_battery import Battery
from nabz_ble import Peripheral


def build(cfg, clock, wdt=None):
    """The wearable for cfg["sensor"], on this board's pins."""
    Pin = machine.Pin
    ADC = machine.ADC
    serial = cfg["serial"] or binascii.hexlify(machine.unique_id()).decode()
    periph = Peripheral(bluetooth.BLE(), cfg, FIRMWARE_REV, serial)
    battery = Battery(
        ADC(Pin(cfg["battery_adc_pin"]), atten=ADC.ATTN_11DB),
        cfg["battery_divider"],
        cfg["battery_low_pct"],
        cfg["battery_critical_pct"],
    )
    if cfg["sensor"] == "ecg":
        return EcgWearable(
            cfg,
            periph,
            battery,
            clock,
            ADC(Pin(cfg["ecg_adc_pin"]), atten=ADC.ATTN_11DB),
            Pin(cfg["ecg_lo_plus_pin"], Pin.IN),
            Pin(cfg["ecg_lo_minus_pin"], Pin.IN),
            Pin(cfg["ecg_sdn_pin"], Pin.OUT, value=0),
            machine.Timer(cfg["ecg_timer_id"]),
            wdt=wdt,
            deepsleep=machine.deepsleep,
        )
    from nabz_ppg import i2c_bus_recover

    scl = cfg["ppg_scl_pin"]
    sda = cfg["ppg_sda_pin"]

    def make_i2c():
        return machine.I2C(cfg["ppg_i2c_id"], scl=Pin(scl), sda=Pin(sda), freq=cfg["ppg_i2c_freq"])

    def recover():
        i2c_bus_recover(scl, sda)

    return OximeterWearable(
        cfg,
        periph,
        battery,
        clock,
        make_i2c,
        Pin(cfg["ppg_int_pin"], Pin.IN, Pin.PULL_UP),
        recover,
        wdt=wdt,
        deepsleep=machine.deepsleep,
    )
