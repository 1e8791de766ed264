"""What makes a virtual charger look like an Alfen Eve / NG9xx. Pure.

Identity formats follow real Alfen traffic (vendor "Alfen BV", model "NG910-60023", serial
"ace0100201", firmware "6.5.0-4217"). The standard configuration keys and their values follow
OCPP 1.6 and common Alfen factory settings; the few ``Alfen-`` keys are modelled on the kind of
vendor keys Alfen exposes, not copied from a key list.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["Identity", "Meter", "config_16", "identity", "variables_201"]

VENDOR: Final = "Alfen BV"
# (model, connectors): NG910 is the single Eve Pro-line, NG920 the double.
MODELS: Final = (
    ("NG910-60023", 1),
    ("NG910-60003", 1),
    ("NG910-60123", 1),
    ("NG910-60503", 1),
    ("NG920-61001", 2),
)
FIRMWARES: Final = ("6.5.0-4217", "6.4.0-4150", "6.3.1-4114", "4.15.7-4054")


@dataclass(frozen=True, slots=True)
class Identity:
    charge_point_id: str
    vendor: str
    model: str
    serial: str
    firmware: str
    connectors: int

    def boot_16(self) -> dict[str, Any]:
        return {
            "chargePointVendor": self.vendor,
            "chargePointModel": self.model,
            "chargePointSerialNumber": self.serial,
            "chargeBoxSerialNumber": self.serial,
            "firmwareVersion": self.firmware,
        }

    def boot_201(self, reason: str) -> dict[str, Any]:
        station = {
            "model": self.model,
            "vendorName": self.vendor,
            "serialNumber": self.serial,
            "firmwareVersion": self.firmware,
        }
        return {"reason": reason, "chargingStation": station}


def identity(charge_point_id: str, rng: random.Random, *, connectors: int | None = None) -> Identity:
    """A seeded Alfen identity. ``connectors`` forces the model family (1: NG910, 2: NG920)."""
    choices = [m for m in MODELS if connectors is None or m[1] == connectors] or list(MODELS)
    model, count = rng.choice(choices)
    serial = f"ace{rng.randrange(100_000, 9_999_999):07d}"
    return Identity(charge_point_id, VENDOR, model, serial, rng.choice(FIRMWARES), connectors or count)


def config_16(identity: Identity) -> dict[str, tuple[str, bool]]:
    """The OCPP 1.6 configuration keys: name -> (value, readonly)."""
    n = identity.connectors
    measurands = (
        "Energy.Active.Import.Register,Current.Import,Voltage,Power.Active.Import,Frequency,Temperature"
    )
    return {
        "AllowOfflineTxForUnknownId": ("false", False),
        "AuthorizationCacheEnabled": ("true", False),
        "AuthorizeRemoteTxRequests": ("false", False),
        "ChargeProfileMaxStackLevel": ("8", True),
        "ChargingScheduleAllowedChargingRateUnit": ("Current", True),
        "ChargingScheduleMaxPeriods": ("24", True),
        "ClockAlignedDataInterval": ("900", False),
        "ConnectionTimeOut": ("60", False),
        "ConnectorPhaseRotation": (",".join(f"{c}.RST" for c in range(n + 1)), False),
        "GetConfigurationMaxKeys": ("64", True),
        "HeartbeatInterval": ("300", False),
        "LocalAuthListEnabled": ("true", False),
        "LocalAuthListMaxLength": ("100", True),
        "LocalAuthorizeOffline": ("true", False),
        "LocalPreAuthorize": ("false", False),
        "MaxChargingProfilesInstalled": ("8", True),
        "MeterValueSampleInterval": ("60", False),
        "MeterValuesAlignedData": ("Energy.Active.Import.Register", False),
        "MeterValuesSampledData": (measurands, False),
        "NumberOfConnectors": (str(n), True),
        "ResetRetries": ("3", False),
        "SendLocalListMaxLength": ("100", True),
        "StopTransactionOnEVSideDisconnect": ("true", False),
        "StopTransactionOnInvalidId": ("true", False),
        "StopTxnAlignedData": ("Energy.Active.Import.Register", False),
        "StopTxnSampledData": ("Energy.Active.Import.Register", False),
        "SupportedFeatureProfiles": (
            "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger",
            True,
        ),
        "TransactionMessageAttempts": ("3", False),
        "TransactionMessageRetryInterval": ("60", False),
        "UnlockConnectorOnEVSideDisconnect": ("true", False),
        "WebSocketPingInterval": ("60", False),
        "Alfen-StationMaxCurrent": ("32", False),
        "Alfen-LoadBalancingMode": ("Off", False),
        "Alfen-SafeCurrent": ("6", False),
        "Alfen-CableType": ("Socket", True),
    }


def variables_201(identity: Identity) -> dict[str, tuple[str, bool]]:
    """The OCPP 2.0.1 device-model variables: 'Component.Variable' -> (value, readonly)."""
    return {
        "OCPPCommCtrlr.HeartbeatInterval": ("300", False),
        "OCPPCommCtrlr.WebSocketPingInterval": ("60", False),
        "SampledDataCtrlr.TxUpdatedInterval": ("60", False),
        "SampledDataCtrlr.TxUpdatedMeasurands": (
            "Energy.Active.Import.Register,Current.Import,Voltage,Power.Active.Import,Frequency,Temperature",
            False,
        ),
        "AlignedDataCtrlr.Interval": ("900", False),
        "AlignedDataCtrlr.Measurands": ("Energy.Active.Import.Register", False),
        "AuthCtrlr.AuthorizeRemoteStart": ("false", False),
        "AuthCtrlr.LocalAuthorizeOffline": ("true", False),
        "TxCtrlr.StopTxOnEVSideDisconnect": ("true", False),
        "TxCtrlr.StopTxOnInvalidId": ("true", False),
        "SmartChargingCtrlr.Enabled": ("true", True),
        "ChargingStation.Model": (identity.model, True),
        "ChargingStation.VendorName": (identity.vendor, True),
    }


@dataclass(slots=True)
class Meter:
    """The MID meter of one connector: an energy register and the electrical values around it."""

    rng: random.Random
    energy_wh: float
    phases: int = 3
    car_max_a: float = 16.0
    limit_a: float = 32.0
    drawing: bool = False
    temperature_c: float = field(default=24.0)

    @classmethod
    def new(cls, rng: random.Random) -> Meter:
        return cls(rng, float(rng.randrange(500_000, 5_000_000)), phases=rng.choice((1, 3, 3, 3)))

    def current(self) -> float:
        if not self.drawing:
            return 0.0
        return max(0.0, min(self.car_max_a, self.limit_a) - self.rng.uniform(0.0, 0.4))

    def advance(self, seconds: float) -> None:
        """Let SECONDS pass: the register grows with the power drawn, the body warms or cools."""
        power = self.power_w(self.current(), 230.0)
        self.energy_wh += power * max(0.0, seconds) / 3600.0
        target = 38.0 if self.drawing else 24.0
        self.temperature_c += (target - self.temperature_c) * (1 - math.exp(-max(0.0, seconds) / 1800))

    def power_w(self, amps: float, volts: float) -> float:
        return amps * volts * self.phases * 0.99

    @property
    def register(self) -> int:
        return int(self.energy_wh)

    def sample(self) -> list[dict[str, Any]]:
        """Neutral samples (measurand, phase, value, unit), rendered per OCPP version by the caller."""
        amps = self.current()
        volts = [self.rng.uniform(228.0, 233.0) for _ in range(3)]
        out: list[dict[str, Any]] = [
            {"measurand": "Energy.Active.Import.Register", "value": float(self.register), "unit": "Wh"}
        ]
        for i in range(3):
            phase_amps = amps if i < self.phases else 0.0
            out.append(
                {"measurand": "Current.Import", "phase": f"L{i + 1}", "value": phase_amps, "unit": "A"}
            )
        for i in range(3):
            out.append({"measurand": "Voltage", "phase": f"L{i + 1}-N", "value": volts[i], "unit": "V"})
        out.append({"measurand": "Power.Active.Import", "value": self.power_w(amps, volts[0]), "unit": "W"})
        out.append({"measurand": "Frequency", "value": self.rng.uniform(49.97, 50.03), "unit": None})
        out.append(
            {"measurand": "Temperature", "value": self.temperature_c, "unit": "Celsius", "location": "Body"}
        )
        return out
