"""Real device drivers behind the HAL interfaces.

One module per device family, and every third-party hardware library behind exactly one
module, so that swapping a library (or faking it in tests) touches one file:

- ``gpio``        gpiozero (coil outputs, feedback inputs, LEDs, software PWM)
- ``modbus_bus``  pymodbus (RTU over RS-485 and TCP), with one lock per physical line
- ``i2c``         smbus2 (raw I2C transfers for the PN532 and the ADS1115)
- ``serial_port`` pyserial (RDM6300-style readers)
- ``pwm_sysfs``   the kernel's hardware PWM through /sys/class/pwm (no library)

The device modules (``contactor``, ``meters``, ``evse_boards``, ``direct_pilot``, ``pn532``,
``rdm6300``, ``keyboard_wedge``, ``lock``, ``indicators``) speak only to those wrappers, and
``hardware.HardwareHal`` ties them into a :class:`hal.interfaces.Hal`.
"""
