//! The prepare and clean-up steps: the run directory an addon sees, its kept CACHE_DIR and
//! HOME, its limits and environment, and their removal.

use super::*;

impl Engine {
    /// The limits of one addon's run: configured, then per addon (when the name is its), then
    /// per request.
    pub(super) fn limits_for(
        &self,
        d: &Descriptor,
        ident: &crate::identity::Identity,
        req: &RunRequest,
    ) -> addon_runners::Limits {
        let mut l = self.config.limits;
        if let Some(o) = self.config.addon_limits.get(&d.meta.name).filter(|_| ident.settings) {
            l = l.with(o);
        }
        l.with(&req.limits).to_limits()
    }

    /// The addon's CACHE_DIR (kept by name and identity, so across its versions as Docspell
    /// does, but never shared with another addon of the same name) and HOME (kept by name,
    /// identity and version, so an interpreter's compile cache stays warm between runs of the
    /// same code).
    pub(super) async fn persistent_dirs(
        &self,
        cache: &Cache,
        d: &Descriptor,
        ident: &crate::identity::Identity,
    ) -> Result<(Entry<()>, Entry<()>), addon_cache::GetError<std::io::Error>> {
        let data_key =
            addon_cache::Key::new(addon_cache::Kind::Data).with("addon", &d.meta.name).with("identity", &ident.key);
        let home_key = addon_cache::Key::new(addon_cache::Kind::Home)
            .with("addon", &d.meta.name)
            .with("identity", &ident.key)
            .with("version", &d.meta.version);
        let (cache, name, id) = (cache.clone(), d.meta.name.clone(), d.id());
        let label = id.clone();
        tokio::task::spawn_blocking(move || {
            let data = cache.get_or_build(&data_key, &name, |_, _| true, |_| Ok::<(), std::io::Error>(()))?;
            let home = cache.get_or_build(&home_key, &id, |_, _| true, |c| fs::create_dir_all(c.join(".cache")))?;
            Ok((data, home))
        })
        .await
        .unwrap_or_else(|e| Err(addon_cache::GetError::Build { label, error: std::io::Error::other(e) }))
    }

    /// Lays out the run directory (SPEC "What an addon sees"). Returns the addon's copy.
    pub(super) async fn prepare(
        &self,
        d: &Descriptor,
        addon: &LoadedAddon,
        req: &RunRequest,
        work: &Path,
        staging: &Path,
        cache_dir: &Path,
    ) -> std::io::Result<PathBuf> {
        let root = addon.root.clone().ok_or_else(|| std::io::Error::other("a descriptor file alone cannot be run"))?;
        let addon_dir = work.join("addons").join(d.id());
        let work = work.to_path_buf();
        let staging = staging.to_path_buf();
        let user_input = req.user_input.clone();
        let inputs = req.inputs.clone();
        let item = req.item.clone();
        let (addon_dir2, cache_dir2) = (addon_dir.clone(), cache_dir.to_path_buf());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            fs::create_dir_all(&work)?;
            fs::create_dir_all(work.with_extension("root"))?;
            fs::create_dir_all(addon_dir2.parent().unwrap_or(&work))?;
            copy_tree(&root, &addon_dir2)?;
            fs::create_dir_all(work.join("arguments"))?;
            fs::write(work.join("arguments/user-input"), user_input)?;
            fs::create_dir_all(work.join("temp"))?;
            // Private to the engine's user: while an addon runs, what it writes there is not yet
            // made safe (a container's root can make a setuid file), and no other user of the
            // host may reach it.
            fs::create_dir_all(staging.parent().unwrap_or(&staging))?;
            let _ = fs_err::set_permissions(
                staging.parent().unwrap_or(&staging),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            );
            fs::create_dir_all(&staging)?;
            fs::create_dir_all(&cache_dir2)?;
            for (dest, src) in &inputs {
                let rel = normalise_relative(dest).map_err(std::io::Error::other)?;
                let target = work.join(rel);
                if let Some(p) = target.parent() {
                    fs::create_dir_all(p)?;
                }
                if src.is_dir() {
                    copy_tree(src, &target)?;
                } else {
                    fs::copy(src, &target)?;
                }
            }
            if let Some(item) = &item {
                copy_tree(item, &work.join("item"))?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(addon_dir)
    }

    pub(super) fn extra_env(
        &self,
        d: &Descriptor,
        ident: &crate::identity::Identity,
        req: &RunRequest,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        env.push(("PATH".into(), path));
        for (k, v) in std::env::vars() {
            if k == "LANG" || k == "LANGUAGE" || k.starts_with("LC_") {
                env.push((k, v));
            }
        }
        if req.item.is_some() {
            for (k, v) in ITEM_ENV {
                env.push((k.to_string(), v.to_string()));
            }
        }
        if let Some(vars) = self.config.env.get(&d.meta.name).filter(|_| ident.settings) {
            env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        env.extend(req.env.iter().cloned());
        env
    }

    /// The run directory and the sandbox's scratch root go, on the engine's janitor (a kept run
    /// directory is made safe to read now).
    pub(super) fn cleanup(&self, work: &Path, keep: bool) {
        let mut chores = vec![super::janitor::Chore::Remove(work.with_extension("root"))];
        if keep {
            match crate::settle::kept_work(work) {
                Ok(_) => tracing::info!("keeping the run directory {}", work.display()),
                Err(e) => tracing::error!("not keeping the run directory {}: {e}", work.display()),
            }
        } else {
            chores.push(super::janitor::Chore::Remove(work.to_path_buf()));
        }
        self.janitor.hand(chores);
    }
}

/// Copies a tree that is not the addon's own doing yet (the addon's source, `--input`, `--item`)
/// into a run directory: modes (without setuid bits), times and links kept, by the walk that
/// never follows a link.
pub(super) fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    match addon_tree::copy_tree(src, dst) {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::debug!("{}: {n} fifos, sockets or devices were not copied", src.display());
            Ok(())
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}
