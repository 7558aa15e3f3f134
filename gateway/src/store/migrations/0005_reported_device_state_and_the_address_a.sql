-- reported device state and the address a device last connected from.
ALTER TABLE devices ADD COLUMN state TEXT;
ALTER TABLE devices ADD COLUMN public_address TEXT;
