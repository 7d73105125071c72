//! Device lists, pre-keys, push endpoints and usernames on Redis.

use redis::Value;

use super::{RedisStore, array, bytes, decimal, int, uint};
use crate::store::{
    AccountStore, Claimed, DeviceId, LinkStore, PreKeyStore, PreKeyUpload, PushStore, Result,
    StoreError, UsernameHolder, UsernameStore,
};

fn dev(d: &DeviceId) -> String {
    d.device.to_string()
}

impl RedisStore {
    fn device_key(&self, d: &DeviceId, kind: &str) -> String {
        format!("{}:{kind}:{}", self.account_key(&d.account), d.device)
    }

    /// Frees `name` if `account` holds it.
    fn drop_name(&self, name: &str, account: &[u8; 32]) -> Result<()> {
        self.redis.eval(
            &self.scripts.drop_name,
            self.name_key(name),
            vec![account.to_vec()],
        )?;
        Ok(())
    }
}

impl AccountStore for RedisStore {
    fn device_list(&self, account: &[u8; 32]) -> Result<Option<(u64, Vec<u8>)>> {
        let key = format!("{}:list", self.account_key(account));
        let got: Vec<Option<Vec<u8>>> = self
            .redis
            .read(redis::cmd("HMGET").arg(key).arg("v").arg("s").clone())?;
        match got.as_slice() {
            [Some(v), Some(s)] => Ok(Some((
                super::number(v).map_err(|_| StoreError::Corrupt("device list version"))?,
                s.clone(),
            ))),
            _ => Ok(None),
        }
    }

    fn device_list_version(&self, account: &[u8; 32]) -> Result<Option<u64>> {
        let key = format!("{}:list", self.account_key(account));
        let v: Option<Vec<u8>> = self
            .redis
            .read(redis::cmd("HGET").arg(key).arg("v").clone())?;
        v.map(|v| super::number(&v).map_err(|_| StoreError::Corrupt("device list version")))
            .transpose()
    }

    fn previous_device_list(&self, account: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let key = format!("{}:list", self.account_key(account));
        self.redis
            .read(redis::cmd("HGET").arg(key).arg("p").clone())
    }

    fn create_account(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let made = self.redis.eval(
            &self.scripts.create_account,
            self.account_key(account),
            vec![decimal(version).into_bytes(), signed.to_vec()],
        )?;
        if int(&made)? == 1 {
            Ok(())
        } else {
            Err(StoreError::AccountExists)
        }
    }

    fn put_device_list(&self, account: &[u8; 32], version: u64, signed: &[u8]) -> Result<()> {
        let answer = array(self.redis.eval(
            &self.scripts.put_list,
            self.account_key(account),
            vec![decimal(version).into_bytes(), signed.to_vec()],
        )?)?;
        match answer.as_slice() {
            [ok] if int(ok)? == 1 => Ok(()),
            [_, stored] => Err(StoreError::StaleDeviceList {
                stored: uint(stored)?,
                offered: version,
            }),
            _ => Err(StoreError::Corrupt("device list answer")),
        }
    }
}

impl PreKeyStore for RedisStore {
    fn publish_pre_keys(&self, device: &DeviceId, upload: PreKeyUpload) -> Result<()> {
        let mut args = Vec::with_capacity(4 + 2 * (upload.one_time.len() + upload.kem.len()));
        args.push(dev(device).into_bytes());
        args.push(upload.signed_pre_key);
        args.push(upload.last_resort_kem_pre_key);
        args.push(upload.one_time.len().to_string().into_bytes());
        for (id, key) in upload.one_time.into_iter().chain(upload.kem) {
            args.push(id.to_string().into_bytes());
            args.push(key);
        }
        self.redis.eval(
            &self.scripts.publish,
            self.account_key(&device.account),
            args,
        )?;
        Ok(())
    }

    fn claim_pre_keys(&self, device: &DeviceId, one_time: bool) -> Result<Option<Claimed>> {
        let answer = array(self.redis.eval(
            &self.scripts.claim,
            self.account_key(&device.account),
            vec![
                dev(device).into_bytes(),
                if one_time {
                    b"1".to_vec()
                } else {
                    b"0".to_vec()
                },
            ],
        )?)?;
        if answer.is_empty() {
            return Ok(None);
        }
        let bad = || StoreError::Corrupt("pre-key answer");
        let [spk, has, otk, kem, last, otk_left, kem_left] =
            <[Value; 7]>::try_from(answer).map_err(|_| bad())?;
        Ok(Some(Claimed {
            signed_pre_key: bytes(spk)?,
            one_time: if int(&has)? == 1 {
                Some(bytes(otk)?)
            } else {
                None
            },
            kem: bytes(kem)?,
            kem_is_last_resort: int(&last)? == 1,
            one_time_left: usize::try_from(uint(&otk_left)?).map_err(|_| bad())?,
            kem_left: usize::try_from(uint(&kem_left)?).map_err(|_| bad())?,
        }))
    }

    fn pre_key_counts(&self, device: &DeviceId) -> Result<(usize, usize)> {
        let (otk, kem): (usize, usize) = {
            let mut c = self.redis.reader();
            let (a, b) = (
                self.device_key(device, "otk"),
                self.device_key(device, "kem"),
            );
            self.redis.run(async move {
                let a: usize = redis::cmd("ZCARD").arg(a).query_async(&mut c).await?;
                let b: usize = redis::cmd("ZCARD").arg(b).query_async(&mut c).await?;
                Ok((a, b))
            })?
        };
        Ok((otk, kem))
    }

    fn remove_pre_keys(&self, device: &DeviceId) -> Result<()> {
        let mut cmd = redis::cmd("DEL");
        for kind in ["spk", "lr", "otk", "otkv", "kem", "kemv"] {
            cmd.arg(self.device_key(device, kind));
        }
        let _: i64 = self.redis.write(cmd)?;
        Ok(())
    }
}

impl crate::store::AccessStore for RedisStore {
    fn set_delivery_access(
        &self,
        device: &DeviceId,
        access: Option<crate::store::DeliveryAccess>,
    ) -> Result<()> {
        let key = self.device_key(device, "access");
        let _: Value = match access {
            Some(a) => self
                .redis
                .write(redis::cmd("SET").arg(key).arg(a.to_bytes()).clone())?,
            None => self.redis.write(redis::cmd("DEL").arg(key).clone())?,
        };
        Ok(())
    }

    fn delivery_access(&self, device: &DeviceId) -> Result<Option<crate::store::DeliveryAccess>> {
        let v: Option<Vec<u8>> = self.redis.read(
            redis::cmd("GET")
                .arg(self.device_key(device, "access"))
                .clone(),
        )?;
        v.map(|v| crate::store::DeliveryAccess::from_bytes(&v))
            .transpose()
    }
}

impl PushStore for RedisStore {
    fn set_push_endpoint(
        &self,
        device: &DeviceId,
        endpoint: Option<&crate::push::Registration>,
    ) -> Result<()> {
        let key = self.device_key(device, "push");
        let _: Value = match endpoint {
            Some(e) => self
                .redis
                .write(redis::cmd("SET").arg(key).arg(e.to_bytes()).clone())?,
            None => self.redis.write(redis::cmd("DEL").arg(key).clone())?,
        };
        Ok(())
    }

    fn push_endpoint(&self, device: &DeviceId) -> Result<Option<crate::push::Registration>> {
        let v: Option<Vec<u8>> = self.redis.read(
            redis::cmd("GET")
                .arg(self.device_key(device, "push"))
                .clone(),
        )?;
        v.map(|v| crate::push::Registration::from_bytes(&v).ok_or(StoreError::Corrupt("push")))
            .transpose()
    }
}

impl UsernameStore for RedisStore {
    fn claim_username(&self, name: &str, account: &[u8; 32], proof: &[u8]) -> Result<()> {
        let bound = self.redis.eval(
            &self.scripts.claim_name,
            self.name_key(name),
            vec![account.to_vec(), proof.to_vec()],
        )?;
        if int(&bound)? != 1 {
            return Err(StoreError::UsernameTaken);
        }
        let key = format!("{}:name", self.account_key(account));
        let old: Option<String> = self
            .redis
            .write(redis::cmd("SET").arg(key).arg(name).arg("GET").clone())?;
        if let Some(old) = old
            && old != name
        {
            self.drop_name(&old, account)?;
        }
        Ok(())
    }

    fn release_username(&self, account: &[u8; 32]) -> Result<Option<String>> {
        let key = format!("{}:name", self.account_key(account));
        let old: Option<String> = self.redis.write(redis::cmd("GETDEL").arg(key).clone())?;
        if let Some(n) = &old {
            self.drop_name(n, account)?;
        }
        Ok(old)
    }

    fn lookup_username(&self, name: &str) -> Result<Option<UsernameHolder>> {
        let held: Option<Vec<u8>> = self
            .redis
            .read(redis::cmd("GET").arg(self.name_key(name)).clone())?;
        let Some(held) = held else {
            return Ok(None);
        };
        let (account, proof) = held
            .split_at_checked(32)
            .ok_or(StoreError::Corrupt("username record"))?;
        Ok(Some(UsernameHolder {
            account: account
                .try_into()
                .map_err(|_| StoreError::Corrupt("username record"))?,
            proof: proof.to_vec(),
        }))
    }

    fn username_of(&self, account: &[u8; 32]) -> Result<Option<String>> {
        self.redis.read(
            redis::cmd("GET")
                .arg(format!("{}:name", self.account_key(account)))
                .clone(),
        )
    }
}

impl RedisStore {
    fn link_key(&self, channel: &[u8; 32], what: &str) -> String {
        format!(
            "{}:{what}",
            self.redis.tagged(&format!("l:{}", hex::encode(channel)))
        )
    }
}

impl LinkStore for RedisStore {
    fn shared(&self) -> bool {
        true
    }

    fn share_offer(&self, channel: &[u8; 32], account: &[u8; 32], ttl_ms: u64) -> Result<()> {
        let _: Value = self.redis.write(
            redis::cmd("SET")
                .arg(self.link_key(channel, "offer"))
                .arg(account.as_slice())
                .arg("PX")
                .arg(ttl_ms.max(1))
                .clone(),
        )?;
        Ok(())
    }

    fn take_shared_offer(&self, channel: &[u8; 32]) -> Result<bool> {
        let n: i64 = self.redis.write(
            redis::cmd("DEL")
                .arg(self.link_key(channel, "offer"))
                .clone(),
        )?;
        Ok(n == 1)
    }

    fn share_link(&self, channel: &[u8; 32], body: &[u8], ttl_ms: u64) -> Result<()> {
        let _: Value = self.redis.write(
            redis::cmd("SET")
                .arg(self.link_key(channel, "msg"))
                .arg(body)
                .arg("PX")
                .arg(ttl_ms.max(1))
                .clone(),
        )?;
        Ok(())
    }

    fn take_shared_link(&self, channel: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        self.redis.write(
            redis::cmd("GETDEL")
                .arg(self.link_key(channel, "msg"))
                .clone(),
        )
    }
}
