"""memsweep's Hydra configs (pkg://memsweep.conf).

Importing this registers hydra/launcher=memsweep_slurm (hydra_plugins/memsweep_launcher) before
any config is composed: Hydra's plugin scan walks hydra_plugins/ with pkgutil, which does not see
the package in an editable install, so it is registered here by hand as well."""

from hydra.core.plugins import Plugins

from hydra_plugins.memsweep_launcher.memsweep_launcher import MemsweepSlurmLauncher

Plugins.instance().register(MemsweepSlurmLauncher)
