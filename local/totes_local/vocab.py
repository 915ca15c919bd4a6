"""Small word lists and composers that make totesys-looking reference data.

The real ``totesys`` was filled by a Faker-style library: invented street names
such as "6826 Herzog Via", towns such as "New Patienceburgh", company names such
as "Hand, Krajcik and Kuhlman", countries from a world list, staff e-mails of the
form ``first.last@terrifictotes.com`` (apostrophes kept). These lists reproduce
that style without copying the real rows, so the project needs no snapshot to run.
Every composer takes a ``random.Random`` so the caller controls determinism.
"""
import random

FIRST_NAMES = (
    "Abbie", "Alvena", "Amir", "Ansel", "Bettie", "Brody", "Cade", "Celia", "Darian", "Delpha",
    "Edwin", "Elda", "Fern", "Flavia", "Gage", "Golda", "Hattie", "Hugo", "Ida", "Isom",
    "Jalen", "Jolie", "Kaden", "Kira", "Lavon", "Lenna", "Maeve", "Milo", "Nadia", "Nils",
    "Odell", "Orla", "Pasquale", "Petra", "Quinn", "Rhea", "Rocio", "Santos", "Selma", "Tad",
    "Thea", "Ulises", "Verna", "Vito", "Wanda", "Wyatt", "Xavier", "Yara", "Zack", "Zella",
)
LAST_NAMES = (
    "Abshire", "Bahringer", "Bartoletti", "Becker", "Bogisich", "Cormier", "Cummerata", "Dach",
    "Dibbert", "Durgan", "Ebert", "Feeney", "Gislason", "Gleichner", "Gorczany", "Hagenes",
    "Hauck", "Heller", "Hodkiewicz", "Jakubowski", "Jaskolski", "Kautzer", "Kertzmann",
    "Kozey", "Kuvalis", "Larkin", "Lemke", "Lindgren", "Marquardt", "McCullough", "Mertz",
    "Nitzsche", "O'Conner", "O'Reilly", "Okuneva", "Pfannerstill", "Quigley", "Reichert",
    "Rempel", "Runte", "Schamberger", "Schowalter", "Stiedemann", "Swaniawski", "Tillman",
    "Torp", "Trantow", "Upton", "Vandervort", "Wehner", "Wisozk", "Witting", "Wuckert", "Zulauf",
)
NAME_PREFIXES = ("Mr.", "Mrs.", "Ms.", "Dr.", "Miss")
NAME_SUFFIXES = ("Jr.", "Sr.", "II", "III", "IV", "PhD", "MD", "DDS", "DVM")
STREET_SUFFIXES = (
    "Avenue", "Branch", "Bridge", "Bypass", "Causeway", "Centers", "Circle", "Cliffs", "Common",
    "Corner", "Course", "Crest", "Crossing", "Dale", "Drive", "Estates", "Expressway",
    "Extension", "Falls", "Field", "Flat", "Ford", "Fort", "Freeway", "Garden", "Glens",
    "Green", "Grove", "Harbor", "Heights", "Hollow", "Inlet", "Island", "Junction", "Key",
    "Lake", "Landing", "Lane", "Lock", "Manor", "Meadow", "Mill", "Mission", "Motorway",
    "Mount", "Orchard", "Park", "Pass", "Pike", "Pines", "Plains", "Port", "Radial", "Ranch",
    "Ridge", "Road", "Route", "Row", "Shoal", "Shores", "Skyway", "Spring", "Square", "Station",
    "Stravenue", "Streets", "Summit", "Terrace", "Throughway", "Track", "Trafficway", "Trail",
    "Tunnel", "Turnpike", "Underpass", "Union", "Valley", "Via", "View", "Village", "Ville",
    "Vista", "Walk", "Wall", "Way", "Wells",
)
TOWN_PATTERNS = (
    "{last}burgh", "{last}side", "{last}view", "{last}furt", "{last}ton", "{last}chester",
    "{last}fort", "{last}mouth", "New {first}", "East {first}", "West {first}", "North {first}",
    "South {first}", "Lake {first}", "Port {first}", "Fort {first}",
)
REAL_TOWNS = (
    "Aliso Viejo", "Bellevue", "Carson City", "Daly City", "Elk Grove", "Fresno", "Gilbert",
    "Hackensack", "Irvine", "Joliet", "Kenner", "Lakewood", "Meridian", "Napa", "Oakland Park",
    "Pueblo", "Redlands", "Sayreville", "Tustin", "Utica", "Vallejo", "Waukegan", "Yonkers",
)
DISTRICTS = (
    "Avon", "Bedfordshire", "Berkshire", "Borders", "Buckinghamshire", "Cambridgeshire",
    "Cheshire", "Cornwall", "Cumbria", "Derbyshire", "Dorset", "Durham", "Essex", "Kent",
)
COUNTRIES = (
    "Argentina", "Australia", "Austria", "Belgium", "Bolivia", "Botswana", "Brazil", "Canada",
    "Chile", "Colombia", "Croatia", "Cyprus", "Denmark", "Estonia", "Fiji", "Finland", "France",
    "Germany", "Ghana", "Greece", "Iceland", "India", "Ireland", "Italy", "Jamaica", "Japan",
    "Kenya", "Latvia", "Lithuania", "Malta", "Mexico", "Mongolia", "Morocco", "Nepal",
    "Netherlands", "New Zealand", "Norway", "Peru", "Poland", "Portugal", "Romania", "Senegal",
    "Singapore", "Slovenia", "Spain", "Sweden", "Tanzania", "Uruguay", "United Kingdom",
    "Vietnam", "Zambia", "Saint Kitts and Nevis", "Turks and Caicos Islands",
)
COMPANY_PATTERNS = (
    "{a} and Sons", "{a} Inc", "{a} LLC", "{a} Group", "{a} - {b}", "{a}, {b} and {c}",
)
#: Materials Faker uses for product names; the real design names are exactly these words.
DESIGN_MATERIALS = (
    "Bronze", "Concrete", "Cotton", "Fresh", "Frozen", "Granite", "Metal", "Plastic",
    "Rubber", "Soft", "Steel", "Wooden",
)
#: Directories the design files sit in (Faker's Unix paths), one string to split.
FILE_LOCATIONS = tuple("""
    /Applications /Library /Network /System /Users /bin /boot /boot/defaults /dev /etc
    /etc/defaults /etc/mail /etc/namedb /etc/periodic /etc/ppp /home /home/user
    /home/user/dir /lib /lost+found /media /mnt /net /opt /opt/bin /opt/include /opt/lib
    /opt/sbin /opt/share /private /private/tmp /private/var /proc /rescue /root /sbin
    /selinux /srv /sys /tmp /usr /usr/X11R6 /usr/bin /usr/include /usr/lib /usr/libdata
    /usr/libexec /usr/local/bin /usr/local/src /usr/obj /usr/ports /usr/sbin /usr/share
    /usr/src /var /var/log /var/mail /var/spool /var/tmp /var/yp
""".split())
#: Department names of Terrific Totes and the two offices they sit in.
DEPARTMENTS = (
    "Sales", "Purchasing", "Production", "Dispatch", "Finance", "Facilities",
    "Communications", "HR",
)
OFFICES = ("Manchester", "Leeds")
EMAIL_DOMAIN = "terrifictotes.com"
CURRENCIES = ("GBP", "USD", "EUR")
PAYMENT_TYPES = ("SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT", "PURCHASE_REFUND")
_ALPHANUMERIC = "abcdefghijklmnopqrstuvwxyz0123456789"


def person(rng: random.Random, decorated: float = 0.0) -> str:
    """A full name; with probability ``decorated`` a title or suffix, as in contact fields."""
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    if rng.random() < decorated:
        if rng.random() < 0.5:
            return f"{rng.choice(NAME_PREFIXES)} {name}"
        return f"{name} {rng.choice(NAME_SUFFIXES)}"
    return name


def company(rng: random.Random) -> str:
    """A legal name in one of the shapes seen in ``counterparty_legal_name``."""
    a, b, c = rng.sample(LAST_NAMES, 3)
    return rng.choice(COMPANY_PATTERNS).format(a=a, b=b, c=c)


def street(rng: random.Random) -> str:
    """A street line such as "4821 Bogisich Skyway" (1 to 5 digit house numbers, zeros kept)."""
    digits = rng.randint(3, 5)
    number = "".join(rng.choice("0123456789") for _ in range(digits))
    name = rng.choice(LAST_NAMES + FIRST_NAMES)
    return f"{number} {name} {rng.choice(STREET_SUFFIXES)}"


def town(rng: random.Random) -> str:
    """A town name: mostly invented ("Lake Hattie", "Kozeyburgh"), sometimes a real one."""
    if rng.random() < 0.35:
        return rng.choice(REAL_TOWNS)
    return rng.choice(TOWN_PATTERNS).format(first=rng.choice(FIRST_NAMES),
                                            last=rng.choice(LAST_NAMES))


def postal_code(rng: random.Random) -> str:
    """A US-style ZIP: five digits, or ZIP+4 about 55% of the time as in the real table."""
    code = f"{rng.randrange(100000):05d}"
    return f"{code}-{rng.randrange(10000):04d}" if rng.random() < 0.55 else code


def phone(rng: random.Random) -> str:
    """A phone number in the real table's "dddd dddddd" layout."""
    return f"{rng.randrange(10000):04d} {rng.randrange(1000000):06d}"


def address(rng: random.Random) -> dict[str, str | None]:
    """One address; line 2 set a third of the time, district half of the time (as measured)."""
    return {
        "address_line_1": street(rng),
        "address_line_2": (f"{rng.choice(FIRST_NAMES + LAST_NAMES)} "
                           f"{rng.choice(STREET_SUFFIXES)}") if rng.random() < 0.33 else None,
        "district": rng.choice(DISTRICTS) if rng.random() < 0.53 else None,
        "city": town(rng),
        "postal_code": postal_code(rng),
        "country": rng.choice(COUNTRIES),
        "phone": phone(rng),
    }


def email(first_name: str, last_name: str) -> str:
    """Staff e-mail as the real system builds it: lower-cased names, punctuation kept."""
    return f"{first_name.lower()}.{last_name.lower()}@{EMAIL_DOMAIN}"


def design_file_name(rng: random.Random, design_name: str, drawn_on: str) -> str:
    """File name such as "steel-20230513-4xk2.json": material, drawing date, random tag."""
    tag = "".join(rng.choice(_ALPHANUMERIC) for _ in range(4))
    return f"{design_name.lower()}-{drawn_on}-{tag}.json"
