"""Paper experiments that are not a network: installed so that their presets run from the console scripts
(`lnrepro-profile experiment=shufflenetv2_guidelines`), kept out of `lnrepro.profiling`, which measures any network.
"""
