"""The worker protocol's error codes are the service's own."""

from service.app import _ITEM_ERRORS
from service.protocol import ItemError


def test_every_item_error_maps_to_the_service_error_of_the_same_code() -> None:
    assert set(_ITEM_ERRORS) == set(ItemError)
    for item_error, service_error in _ITEM_ERRORS.items():
        assert service_error.code == item_error.value
