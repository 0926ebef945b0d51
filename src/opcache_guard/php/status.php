<?php
// opcache-guard status script: one JSON document with the OPcache status and configuration
// and, when asked with ?fpm=1 on PHP 8.1 and newer, the FPM pool state from fpm_get_status().
// That call is off by default because it can crash the worker while other workers update
// the scoreboard (php-src issue 19974, seen here on PHP 8.2.36).
header('Content-Type: application/json');
header('Cache-Control: no-store');

$out = [
    'format' => 1,
    'php_version' => PHP_VERSION,
    'sapi' => PHP_SAPI,
    'time' => microtime(true),
    'pid' => getmypid(),
    'opcache_loaded' => function_exists('opcache_get_status'),
    'status' => null,
    'configuration' => null,
    'fpm' => null,
];
if ($out['opcache_loaded']) {
    $out['status'] = @opcache_get_status(false);
    $out['configuration'] = @opcache_get_configuration();
    if ($out['status'] === false) {
        $error = error_get_last();
        $out['status_error'] = $error ? $error['message'] : null;
    }
}
if (!empty($_GET['fpm']) && function_exists('fpm_get_status')) {
    $fpm = fpm_get_status();
    if (is_array($fpm)) {
        unset($fpm['procs']);
    }
    $out['fpm'] = $fpm;
}
echo json_encode($out, JSON_PARTIAL_OUTPUT_ON_ERROR);
