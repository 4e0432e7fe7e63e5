//! Every bound the store, io, projection and server enforce, in one place.
//!
//! Names put the qualifier last (`EVENT_BYTES_MAX`, not `MAX_EVENT_BYTES`) so related limits sort together, and units
//! come before the qualifier (`CONNECTION_IDLE_SECS_MAX`). The `const _: () = { ... }` blocks at the end of each
//! section fail the build when two limits stop fitting each other.
//!
//! Sections: file names (model, tree), events and appends (store), reads (store, io), projections, journal, server.

// --- file names ------------------------------------------------------------------------------------------------

// --- events and appends ----------------------------------------------------------------------------------------

// --- reads and io ----------------------------------------------------------------------------------------------

// --- projections -----------------------------------------------------------------------------------------------

// --- journal ---------------------------------------------------------------------------------------------------

// --- server ----------------------------------------------------------------------------------------------------
