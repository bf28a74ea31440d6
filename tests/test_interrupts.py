"""nwor.interrupts.HeldSignals with real signals sent to this process."""
from __future__ import annotations

import signal
import threading

import pytest

from nwor.interrupts import HeldSignals


class Stop(Exception):
    """What a caller's own SIGTERM handler raises (the CLI's _Terminated)."""


def _raise_stop(signum, frame):
    raise Stop(signum)


@pytest.fixture(autouse=True)
def handlers():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Python's own Ctrl-C handler, whatever this process inherited: pytest started as a background job of a
    # script inherits SIGINT ignored, and the tests below say what each one starts from.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_ctrl_c_is_held_until_checked_then_raised_and_the_handlers_restored():
    signal.signal(signal.SIGTERM, _raise_stop)
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals() as held:
            signal.raise_signal(signal.SIGINT)
            reached = True  # not interrupted: only noted
            assert held.noted == [signal.SIGINT]
            held.check()
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is _raise_stop


def test_check_raises_what_the_replaced_handler_raises():
    signal.signal(signal.SIGTERM, _raise_stop)
    with pytest.raises(Stop):
        with HeldSignals() as held:
            signal.raise_signal(signal.SIGTERM)
            held.check()


def test_ctrl_c_ignored_on_entry_still_stops():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell's background job starts
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals() as held:
            signal.raise_signal(signal.SIGINT)
            held.check()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_second_signal_raises_at_once():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals():
            signal.raise_signal(signal.SIGINT)
            reached.append("after the first")
            signal.raise_signal(signal.SIGINT)
            reached.append("after the second")
    assert reached == ["after the first"]


def test_install_takes_back_a_handler_a_library_put_in_place():
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals() as held:
            signal.signal(signal.SIGTERM, lambda *_: None)  # as ray.init does
            held.install()
            signal.raise_signal(signal.SIGTERM)
            assert held.noted == [signal.SIGTERM]
            held.check()


def test_a_signal_left_unchecked_is_raised_on_leaving():
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with HeldSignals():
            signal.raise_signal(signal.SIGINT)
            reached.append("the block's end")
    assert reached == ["the block's end"]


def test_nothing_noted_nothing_raised():
    with HeldSignals() as held:
        held.check()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_off_the_main_thread_it_does_nothing():
    errors = []

    def body():
        try:
            with HeldSignals() as held:
                held.install()
                held.check()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert errors == []
