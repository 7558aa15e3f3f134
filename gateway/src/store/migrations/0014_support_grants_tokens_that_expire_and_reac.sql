-- support grants: API tokens that expire by themselves (unix seconds; NULL never) and
-- may reach only one fleet or one device (both NULL: everything their role allows).
ALTER TABLE api_tokens ADD COLUMN expires_at BIGINT;
ALTER TABLE api_tokens ADD COLUMN scope_fleet TEXT;
ALTER TABLE api_tokens ADD COLUMN scope_device TEXT;
