"""Validation of item and location master data (pure)."""

from __future__ import annotations

from dataclasses import replace

from server.domain import limits
from server.domain.errors import Violations
from server.domain.model import Item, Location


def check_item(item: Item, now_ms: int, path: str = "item") -> Item:
    """Returns the item as it will be stored, or raises InvalidArgument."""
    violations = Violations()
    _check_code(violations, f"{path}.sku", item.sku, limits.ID_LENGTH_MAX)
    _check_code(violations, f"{path}.base_unit", item.base_unit, limits.UNIT_LENGTH_MAX)
    if len(item.description) > limits.TEXT_LENGTH_MAX:
        violations.add(f"{path}.description", f"longer than {limits.TEXT_LENGTH_MAX} characters")
    if len(item.units) > limits.UNITS_PER_ITEM_MAX:
        violations.add(f"{path}.units", f"at most {limits.UNITS_PER_ITEM_MAX} units")
    seen = {item.base_unit}
    for index, conversion in enumerate(item.units):
        unit_path = f"{path}.units[{index}]"
        _check_code(violations, f"{unit_path}.unit", conversion.unit, limits.UNIT_LENGTH_MAX)
        if conversion.unit in seen:
            violations.add(f"{unit_path}.unit", f"unit {conversion.unit!r} defined twice")
        seen.add(conversion.unit)
        if not 1 <= conversion.base_units_per_unit <= limits.BASE_UNITS_PER_UNIT_MAX:
            violations.add(
                f"{unit_path}.base_units_per_unit",
                f"must be between 1 and {limits.BASE_UNITS_PER_UNIT_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
    for name, value in (
        ("order_minimum", item.order_minimum),
        ("order_multiple", item.order_multiple),
        ("safety_stock", item.safety_stock),
    ):
        if not 0 <= value <= limits.QUANTITY_MAX:
            violations.add(
                f"{path}.{name}",
                f"must be between 0 and {limits.QUANTITY_MAX}",
                "ERROR_REASON_INVALID_QUANTITY",
            )
    violations.raise_if_any()
    return replace(item, updated_at_ms=now_ms)


def check_location(location: Location, path: str = "location") -> Location:
    violations = Violations()
    _check_code(violations, f"{path}.location_id", location.location_id, limits.ID_LENGTH_MAX)
    if len(location.description) > limits.TEXT_LENGTH_MAX:
        violations.add(f"{path}.description", f"longer than {limits.TEXT_LENGTH_MAX} characters")
    violations.raise_if_any()
    return location


def _check_code(violations: Violations, path: str, value: str, length_max: int) -> None:
    if not value:
        violations.add(path, "must not be empty")
    elif len(value) > length_max:
        violations.add(path, f"longer than {length_max} characters")
    elif not value.isprintable() or value != value.strip():
        violations.add(path, "must be printable with no leading or trailing spaces")
