// The kernel's store traits, implemented once for both backends.
//
// Not a module of its own: sqlite.rs and postgres.rs `include!` it after defining
// `type Backend = <their store>;`, a `queries` module (see queries.rs) and two methods that
// decide where a query runs:
// - `read(f)`: a pooled connection, no explicit transaction;
// - `write(f)`: an atomic, durable unit — the SQLite group-commit writer (a savepoint in a
//   shared transaction) or a PostgreSQL transaction of its own.
// Both return only after the database committed. Closures own their inputs ('static) because
// a SQLite write may run on the writer task after the caller stopped waiting.

#[async_trait::async_trait]
impl kernel::store::JournalStore for Backend {
    async fn load_customer(
        &self,
        id: &kernel::CustomerId,
    ) -> Result<Option<kernel::store::CustomerRecord>, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::load_customer(c, &id).await }))
            .await
    }

    async fn journal_after(
        &self,
        id: &kernel::CustomerId,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<kernel::FeedEvent>, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |c| {
            Box::pin(async move { queries::journal_after(c, &id, after_seq, limit).await })
        })
        .await
    }

    async fn feed_page(
        &self,
        id: &kernel::CustomerId,
        before_seq: Option<u64>,
        limit: u32,
    ) -> Result<Vec<kernel::FeedEvent>, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |c| {
            Box::pin(async move { queries::feed_page(c, &id, before_seq, limit).await })
        })
        .await
    }

    async fn applied_changes(
        &self,
        id: &kernel::CustomerId,
        change_ids: &[String],
    ) -> Result<Vec<String>, kernel::store::StoreError> {
        if change_ids.is_empty() {
            return Ok(Vec::new());
        }
        let id = id.as_str().to_owned();
        let change_ids = change_ids.to_vec();
        self.read(move |c| {
            Box::pin(async move { queries::applied_changes(c, &id, &change_ids).await })
        })
        .await
    }

    async fn commit(
        &self,
        commit: kernel::store::Commit,
    ) -> Result<Vec<i64>, kernel::store::StoreError> {
        // Refuse a malformed commit before it takes a place in the write queue.
        queries::validate_commit(&commit)?;
        self.commit_validated(commit).await
    }

    async fn mark_read(
        &self,
        id: &kernel::CustomerId,
        up_to_seq: u64,
    ) -> Result<u64, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.write(move |c| Box::pin(async move { queries::mark_read(c, &id, up_to_seq).await }))
            .await
    }

    async fn outbox_pending(
        &self,
        limit: u32,
    ) -> Result<Vec<kernel::store::OutboxRow>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::outbox_pending(c, limit).await }))
            .await
    }

    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), kernel::store::StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        self.write(move |c| Box::pin(async move { queries::outbox_delete(c, &ids).await }))
            .await
    }

    async fn schedule_due(
        &self,
        partitions: &[u32],
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<kernel::store::DueRun>, kernel::store::StoreError> {
        if partitions.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let partitions = partitions.to_vec();
        self.read(move |c| {
            Box::pin(async move { queries::schedule_due(c, &partitions, now_ms, limit).await })
        })
        .await
    }

    async fn schedule_advance(
        &self,
        customer: &kernel::CustomerId,
        autopayment_id: &str,
        due_ms: i64,
        next_run_ms: Option<i64>,
    ) -> Result<bool, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        let autopayment_id = autopayment_id.to_owned();
        self.write(move |c| {
            Box::pin(async move {
                queries::schedule_advance(c, &customer, &autopayment_id, due_ms, next_run_ms).await
            })
        })
        .await
    }
}

#[async_trait::async_trait]
impl kernel::store::AuthStore for Backend {
    async fn credential(
        &self,
        login: &str,
    ) -> Result<Option<kernel::store::Credential>, kernel::store::StoreError> {
        let login = login.to_owned();
        self.read(move |c| Box::pin(async move { queries::credential(c, &login).await }))
            .await
    }

    async fn insert_credential(
        &self,
        credential: &kernel::store::Credential,
    ) -> Result<bool, kernel::store::StoreError> {
        let credential = credential.clone();
        self.write(move |c| {
            Box::pin(async move { queries::insert_credential(c, &credential).await })
        })
        .await
    }

    async fn create_session(
        &self,
        session: &kernel::store::SessionRecord,
    ) -> Result<(), kernel::store::StoreError> {
        let session = session.clone();
        self.write(move |c| Box::pin(async move { queries::create_session(c, &session).await }))
            .await
    }

    async fn session(
        &self,
        id: &str,
    ) -> Result<Option<kernel::store::SessionRecord>, kernel::store::StoreError> {
        let id = id.to_owned();
        self.read(move |c| Box::pin(async move { queries::session(c, &id).await }))
            .await
    }

    async fn staff_sessions(
        &self,
        limit: u32,
    ) -> Result<Vec<kernel::store::SessionRecord>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::staff_sessions(c, limit).await }))
            .await
    }

    async fn revoke_session(&self, id: &str) -> Result<(), kernel::store::StoreError> {
        let id = id.to_owned();
        self.write(move |c| Box::pin(async move { queries::revoke_session(c, &id).await }))
            .await
    }

    async fn sessions_of(
        &self,
        customer: &kernel::CustomerId,
    ) -> Result<Vec<kernel::store::SessionRecord>, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::sessions_of(c, &customer).await }))
            .await
    }

    async fn rotate_refresh(
        &self,
        id: &str,
        old_hash: &str,
        new_hash: &str,
        now: time::OffsetDateTime,
    ) -> Result<bool, kernel::store::StoreError> {
        let (id, old_hash, new_hash) = (id.to_owned(), old_hash.to_owned(), new_hash.to_owned());
        self.write(move |c| {
            Box::pin(
                async move { queries::rotate_refresh(c, &id, &old_hash, &new_hash, now).await },
            )
        })
        .await
    }

    async fn revoked_since(
        &self,
        since: time::OffsetDateTime,
    ) -> Result<Vec<(String, kernel::CustomerId)>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::revoked_since(c, since).await }))
            .await
    }

    async fn change_phone(
        &self,
        customer: &kernel::CustomerId,
        old: &str,
        new: &str,
    ) -> Result<bool, kernel::store::StoreError> {
        let (customer, old, new) = (customer.as_str().to_owned(), old.to_owned(), new.to_owned());
        self.write(move |c| {
            Box::pin(async move { queries::change_phone(c, &customer, &old, &new).await })
        })
        .await
    }

    async fn set_password(
        &self,
        login: &str,
        password_hash: &str,
    ) -> Result<(), kernel::store::StoreError> {
        let (login, hash) = (login.to_owned(), password_hash.to_owned());
        self.write(move |c| Box::pin(async move { queries::set_password(c, &login, &hash).await }))
            .await
    }

    async fn insert_challenge(
        &self,
        challenge: &kernel::store::ChallengeRecord,
    ) -> Result<(), kernel::store::StoreError> {
        let challenge = challenge.clone();
        self.write(move |c| Box::pin(async move { queries::insert_challenge(c, &challenge).await }))
            .await
    }

    async fn challenge(
        &self,
        id: &str,
    ) -> Result<Option<kernel::store::ChallengeRecord>, kernel::store::StoreError> {
        let id = id.to_owned();
        self.read(move |c| Box::pin(async move { queries::challenge(c, &id).await }))
            .await
    }

    async fn update_challenge(
        &self,
        id: &str,
        expected_version: u64,
        state: &str,
    ) -> Result<bool, kernel::store::StoreError> {
        let (id, state) = (id.to_owned(), state.to_owned());
        self.write(move |c| {
            Box::pin(
                async move { queries::update_challenge(c, &id, expected_version, &state).await },
            )
        })
        .await
    }

    async fn lock_state(
        &self,
        key: &str,
    ) -> Result<kernel::store::LockState, kernel::store::StoreError> {
        let key = key.to_owned();
        self.read(move |c| Box::pin(async move { queries::lock_state(c, &key).await }))
            .await
    }

    async fn record_failure(
        &self,
        key: &str,
        policy: kernel::store::LockoutPolicy,
        now: time::OffsetDateTime,
    ) -> Result<kernel::store::LockState, kernel::store::StoreError> {
        let key = key.to_owned();
        self.write(move |c| {
            Box::pin(async move { queries::record_failure(c, &key, policy, now).await })
        })
        .await
    }

    async fn clear_failures(&self, key: &str) -> Result<(), kernel::store::StoreError> {
        let key = key.to_owned();
        self.write(move |c| Box::pin(async move { queries::clear_failures(c, &key).await }))
            .await
    }

    async fn trust_device(
        &self,
        customer: &kernel::CustomerId,
        device_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), kernel::store::StoreError> {
        let (customer, device) = (customer.as_str().to_owned(), device_id.to_owned());
        self.write(move |c| {
            Box::pin(async move { queries::trust_device(c, &customer, &device, now).await })
        })
        .await
    }

    async fn is_trusted_device(
        &self,
        customer: &kernel::CustomerId,
        device_id: &str,
    ) -> Result<bool, kernel::store::StoreError> {
        let (customer, device) = (customer.as_str().to_owned(), device_id.to_owned());
        self.read(move |c| {
            Box::pin(async move { queries::is_trusted_device(c, &customer, &device).await })
        })
        .await
    }

    async fn device_trusted_at(
        &self,
        customer: &kernel::CustomerId,
        device_id: &str,
    ) -> Result<Option<time::OffsetDateTime>, kernel::store::StoreError> {
        let (customer, device) = (customer.as_str().to_owned(), device_id.to_owned());
        self.read(move |c| {
            Box::pin(async move { queries::device_trusted_at(c, &customer, &device).await })
        })
        .await
    }

    async fn login_networks(
        &self,
        customer: &kernel::CustomerId,
    ) -> Result<Vec<String>, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::login_networks(c, &customer).await }))
            .await
    }

    async fn remember_login_network(
        &self,
        customer: &kernel::CustomerId,
        network: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), kernel::store::StoreError> {
        let (customer, network) = (customer.as_str().to_owned(), network.to_owned());
        self.write(move |c| {
            Box::pin(
                async move { queries::remember_login_network(c, &customer, &network, now).await },
            )
        })
        .await
    }

    async fn set_risk_flag(
        &self,
        customer: &kernel::CustomerId,
        until: time::OffsetDateTime,
    ) -> Result<(), kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.write(move |c| {
            Box::pin(async move { queries::set_risk_flag(c, &customer, until).await })
        })
        .await
    }

    async fn risk_flag(
        &self,
        customer: &kernel::CustomerId,
    ) -> Result<Option<time::OffsetDateTime>, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::risk_flag(c, &customer).await }))
            .await
    }

    async fn totp_enrolment(
        &self,
        customer: &kernel::CustomerId,
    ) -> Result<Option<kernel::store::TotpEnrolment>, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::totp_enrolment(c, &customer).await }))
            .await
    }

    async fn start_totp(
        &self,
        enrolment: &kernel::store::TotpEnrolment,
    ) -> Result<bool, kernel::store::StoreError> {
        let enrolment = enrolment.clone();
        self.write(move |c| Box::pin(async move { queries::start_totp(c, &enrolment).await }))
            .await
    }

    async fn confirm_totp(
        &self,
        customer: &kernel::CustomerId,
        sealed_secret: &[u8],
        step: i64,
    ) -> Result<bool, kernel::store::StoreError> {
        let (customer, sealed) = (customer.as_str().to_owned(), sealed_secret.to_vec());
        self.write(move |c| {
            Box::pin(async move { queries::confirm_totp(c, &customer, &sealed, step).await })
        })
        .await
    }

    async fn use_totp_step(
        &self,
        customer: &kernel::CustomerId,
        step: i64,
    ) -> Result<bool, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.write(move |c| {
            Box::pin(async move { queries::use_totp_step(c, &customer, step).await })
        })
        .await
    }

    async fn delete_totp(
        &self,
        customer: &kernel::CustomerId,
    ) -> Result<bool, kernel::store::StoreError> {
        let customer = customer.as_str().to_owned();
        self.write(move |c| Box::pin(async move { queries::delete_totp(c, &customer).await }))
            .await
    }

    async fn audit_append(
        &self,
        entry: &kernel::store::AuditEntry,
    ) -> Result<(), kernel::store::StoreError> {
        let entry = entry.clone();
        self.write(move |c| Box::pin(async move { queries::audit_append(c, &entry).await }))
            .await
    }

    async fn audit_recent(
        &self,
        limit: u32,
    ) -> Result<Vec<kernel::store::AuditEntry>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::audit_recent(c, limit).await }))
            .await
    }

    async fn insert_staff(
        &self,
        account: &kernel::store::StaffAccount,
    ) -> Result<bool, kernel::store::StoreError> {
        let account = account.clone();
        self.write(move |c| Box::pin(async move { queries::insert_staff(c, &account).await }))
            .await
    }

    async fn use_staff_totp_step(
        &self,
        login: &str,
        step: i64,
    ) -> Result<bool, kernel::store::StoreError> {
        let login = login.to_owned();
        self.write(move |c| {
            Box::pin(async move { queries::use_staff_totp_step(c, &login, step).await })
        })
        .await
    }

    async fn staff(
        &self,
        login: &str,
    ) -> Result<Option<kernel::store::StaffAccount>, kernel::store::StoreError> {
        let login = login.to_owned();
        self.read(move |c| Box::pin(async move { queries::staff(c, &login).await }))
            .await
    }

    async fn secret(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Vec<u8>, kernel::store::StoreError> {
        let name = name.to_owned();
        let candidate = candidate.to_vec();
        self.write(move |c| Box::pin(async move { queries::secret(c, &name, &candidate).await }))
            .await
    }
}

#[async_trait::async_trait]
impl kernel::store::AbsStore for Backend {
    async fn abs_seed(
        &self,
        customer: &kernel::store::AbsCustomer,
        products: &[kernel::store::AbsProduct],
    ) -> Result<bool, kernel::store::StoreError> {
        let customer = customer.clone();
        let products = products.to_vec();
        self.write(move |c| {
            Box::pin(async move { queries::abs_seed(c, &customer, &products).await })
        })
        .await
    }

    async fn abs_customer(
        &self,
        id: &kernel::CustomerId,
    ) -> Result<Option<kernel::store::AbsCustomer>, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::abs_customer(c, &id).await }))
            .await
    }

    async fn abs_set_card_pans(
        &self,
        cards: &[(String, kernel::CustomerId, String)],
    ) -> Result<(), kernel::store::StoreError> {
        let cards = cards.to_vec();
        self.write(move |c| {
            Box::pin(async move {
                for (card, customer, hash) in &cards {
                    queries::abs_set_card_pan(c, card, customer.as_str(), hash).await?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn abs_customer_by_card(
        &self,
        pan_hash: &str,
    ) -> Result<Option<kernel::store::AbsCustomer>, kernel::store::StoreError> {
        let hash = pan_hash.to_owned();
        self.read(move |c| Box::pin(async move { queries::abs_customer_by_card(c, &hash).await }))
            .await
    }

    async fn abs_customer_by_phone(
        &self,
        phone: &str,
    ) -> Result<Option<kernel::store::AbsCustomer>, kernel::store::StoreError> {
        let phone = phone.to_owned();
        self.read(move |c| Box::pin(async move { queries::abs_customer_by_phone(c, &phone).await }))
            .await
    }

    async fn abs_products(
        &self,
        id: &kernel::CustomerId,
    ) -> Result<Vec<kernel::store::AbsProduct>, kernel::store::StoreError> {
        let id = id.as_str().to_owned();
        self.read(move |c| Box::pin(async move { queries::abs_products(c, &id).await }))
            .await
    }

    async fn abs_post(
        &self,
        posting: &kernel::store::AbsPosting,
    ) -> Result<kernel::store::AbsPostingResult, kernel::store::StoreError> {
        let owned = posting.clone();
        let applied = self
            .write(move |c| Box::pin(async move { queries::abs_post(c, &owned).await }))
            .await;
        match applied {
            // A concurrent duplicate won the race (its transaction committed first, ours
            // rolled back whole): answer with the winner's result.
            Err(kernel::store::StoreError::Duplicate) => {
                let id = posting.id.clone();
                self.read(move |c| {
                    Box::pin(async move { queries::abs_posting_result(c, &id).await })
                })
                .await?
                .ok_or(kernel::store::StoreError::Duplicate)
            }
            other => other,
        }
    }

    async fn abs_account(
        &self,
        id: &str,
    ) -> Result<Option<kernel::store::AbsProduct>, kernel::store::StoreError> {
        let id = id.to_owned();
        self.read(move |c| Box::pin(async move { queries::abs_account(c, &id).await }))
            .await
    }

    async fn abs_transfer(
        &self,
        transfer: &kernel::store::AbsTransfer,
    ) -> Result<kernel::store::AbsTransferResult, kernel::store::StoreError> {
        queries::validate_transfer(transfer)?;
        let applied = self.apply_transfer(transfer.clone()).await;
        match applied {
            // A concurrent duplicate won the race: answer with the winner's result.
            Err(kernel::store::StoreError::Duplicate) => {
                let id = transfer.id.clone();
                let first = self
                    .read(move |c| {
                        Box::pin(async move { queries::abs_transfer_result(c, &id).await })
                    })
                    .await?;
                match first {
                    Some((_, result)) => Ok(result),
                    None => Err(kernel::store::StoreError::Duplicate),
                }
            }
            other => other,
        }
    }

    async fn abs_hold(
        &self,
        hold: &kernel::store::AbsHold,
    ) -> Result<kernel::store::AbsHoldResult, kernel::store::StoreError> {
        for _ in 0..2 {
            let owned = hold.clone();
            match self
                .write(move |c| Box::pin(async move { queries::abs_hold(c, &owned).await }))
                .await
            {
                // A concurrent duplicate inserted first: the next attempt finds it.
                Err(kernel::store::StoreError::Duplicate) => continue,
                other => return other,
            }
        }
        Err(kernel::store::StoreError::Duplicate)
    }

    async fn abs_capture(
        &self,
        hold_id: &str,
        transfer: &kernel::store::AbsTransfer,
    ) -> Result<kernel::store::AbsTransferResult, kernel::store::StoreError> {
        queries::validate_transfer(transfer)?;
        let (hold_id, transfer) = (hold_id.to_owned(), transfer.clone());
        self.write(move |c| {
            Box::pin(async move { queries::abs_capture(c, &hold_id, &transfer).await })
        })
        .await
    }

    async fn abs_release(&self, hold_id: &str) -> Result<bool, kernel::store::StoreError> {
        let hold_id = hold_id.to_owned();
        self.write(move |c| Box::pin(async move { queries::abs_release(c, &hold_id).await }))
            .await
    }

    async fn abs_rate_set(&self) -> Result<Option<(i64, String)>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::abs_rate_set(c).await }))
            .await
    }

    async fn abs_save_rate_set(
        &self,
        version: i64,
        body: &str,
    ) -> Result<bool, kernel::store::StoreError> {
        let body = body.to_owned();
        self.write(move |c| {
            Box::pin(async move { queries::abs_save_rate_set(c, version, &body).await })
        })
        .await
    }

    async fn abs_ledger_sums(&self) -> Result<Vec<(String, i64)>, kernel::store::StoreError> {
        self.read(move |c| Box::pin(async move { queries::abs_ledger_sums(c).await }))
            .await
    }

    async fn abs_set_status(
        &self,
        id: &str,
        status: &str,
    ) -> Result<(), kernel::store::StoreError> {
        let id = id.to_owned();
        let status = status.to_owned();
        self.write(move |c| Box::pin(async move { queries::abs_set_status(c, &id, &status).await }))
            .await
    }

    async fn abs_open_product(
        &self,
        product: &kernel::store::AbsProduct,
        transfer: &kernel::store::AbsTransfer,
    ) -> Result<kernel::store::AbsTransferResult, kernel::store::StoreError> {
        let product = product.clone();
        let transfer = transfer.clone();
        self.write(move |c| {
            Box::pin(async move { queries::abs_open_product(c, &product, &transfer).await })
        })
        .await
    }

    async fn abs_set_details(
        &self,
        id: &str,
        details: &serde_json::Value,
    ) -> Result<(), kernel::store::StoreError> {
        let id = id.to_owned();
        let details = details.to_string();
        self.write(move |c| {
            Box::pin(async move { queries::abs_set_details(c, &id, &details).await })
        })
        .await
    }
}
