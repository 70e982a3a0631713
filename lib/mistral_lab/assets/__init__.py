"""Files the library ships (the sample receipt image), each made by code next to it."""
