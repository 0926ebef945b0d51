from opcache_guard.probe import Prober
from conftest import pool_of


def test_probe_reads_live_master(fpm_master, probe_settings):
    spec = fpm_master()
    sample = Prober(probe_settings).probe(pool_of(spec))
    assert sample.opcache.enabled
    assert sample.opcache.max_cached_keys == 3907
    assert sample.fpm is not None
    assert sample.fpm.total_processes == spec.max_children
